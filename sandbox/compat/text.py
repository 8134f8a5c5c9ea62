"""Plain-text descriptions of a result, shared by the adapters and the model loop."""

from __future__ import annotations

from ..results import Outcome, Result

MAX_TRACEBACK_CHARS = 4000

_WHY = {
    Outcome.TIMEOUT: "the run exceeded its wall-clock limit and was killed",
    Outcome.CPU_LIMIT: "the run used up its CPU-time limit and was killed",
    Outcome.MEMORY_LIMIT: "the run exceeded its memory limit and was killed",
    Outcome.POLICY_VIOLATION: "the run made a system call the sandbox forbids (no network, no new processes "
                              "outside the sandbox, no privileged calls) and was killed",
    Outcome.CRASHED: "the interpreter crashed (killed by a signal)",
    Outcome.SANDBOX_ERROR: "the sandbox itself failed; nothing is wrong with the code, retrying may work",
}


def outcome_summary(result: Result) -> str:
    """One or a few lines saying why a run did not succeed ('' for ok): the exception with its
    traceback, or what stopped the run."""
    if result.outcome is Outcome.OK:
        return ""
    if result.outcome is Outcome.ERROR:
        if result.error is not None:
            tb = result.error.traceback.strip()
            if len(tb) > MAX_TRACEBACK_CHARS:
                tb = "...\n" + tb[-MAX_TRACEBACK_CHARS:]
            return tb or f"{result.error.type}: {result.error.message}"
        return f"the program exited with status {result.exit_code}"
    why = _WHY[result.outcome]
    if result.outcome is Outcome.CRASHED and result.exit_code is not None and result.exit_code < 0:
        why += f" {-result.exit_code}"
    if result.outcome is Outcome.SANDBOX_ERROR and result.error is not None:
        why += f" ({result.error.message})"
    return f"{why} after {result.usage.wall_ms / 1000:.1f} s" if result.outcome is Outcome.TIMEOUT else why


def run_report(result: Result) -> str:
    """What the code printed (stdout, then stderr), then the failure summary, as one text."""
    chunks = [result.stdout]
    if result.stdout_truncated:
        chunks.append("\n[stdout truncated]\n")
    if result.stderr:
        chunks.append(result.stderr)
        if result.stderr_truncated:
            chunks.append("\n[stderr truncated]\n")
    summary = outcome_summary(result)
    text = "".join(c if c.endswith("\n") or not c else c + "\n" for c in chunks if c)
    if summary:
        text += summary + ("\n" if not summary.endswith("\n") else "")
    return text


def stderr_with_summary(result: Result) -> str:
    """stderr as a terminal shows it: what the program wrote, then the traceback or the reason the
    run was stopped (for peers whose format has no separate error field)."""
    summary = outcome_summary(result)
    text = result.stderr
    if summary:
        if text and not text.endswith("\n"):
            text += "\n"
        text += summary if summary.endswith("\n") else summary + "\n"
    return text
