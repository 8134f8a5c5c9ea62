"""Format adapters: our `Result` in the shapes that other clients already parse.

One module per peer (gemini, openai, sandboxfusion, e2b, librechat). Each holds pure functions,
`to_<peer>(result, ...) -> dict` and `from_<peer>(payload) -> request`: no I/O and no engine
import, so they are tested without jails and a route that uses one is a few lines.
"""

from __future__ import annotations

from .text import outcome_summary, run_report

__all__ = ["outcome_summary", "run_report"]
