"""The benchmark harness of `sandbox`: `sandbox bench` / `python -m benchmarks` (see README.md here)."""

from .cli import main

__all__ = ["main"]
