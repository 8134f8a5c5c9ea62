"""The benchmark harness of `sandbox`: `sandbox bench` / `python -m sandbox.bench` (see benchmarks/README.md in the repository)."""

from .cli import main

__all__ = ["main"]
