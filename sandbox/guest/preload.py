"""What the zygote imports before it forks, in two stages, and what keeps figures working in both.

Stage one, the standard library modules that small programs (HumanEval, MBPP, APPS solutions)
import, is where the lean fork server is forked: a child of a ~20 MB interpreter forks, isolates
and exits in a fraction of what a child of the ~300 MB warm scientific stack costs. Stage two
is the image's preload list, after which the full fork server is forked.

A program sent to the lean server that imports matplotlib itself still gets its figures: the
import hook below patches `pyplot.show` on import, wherever that import happens.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import io
import os
import shutil
import sys

from . import runner

# Imported once in the zygote before the lean fork server is forked (each costs a child
# nothing; not importing them would cost each program that needs them a millisecond or more).
LEAN_MODULES = (
    "abc", "array", "bisect", "collections", "contextlib", "copy", "dataclasses", "datetime", "decimal",
    "enum", "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math", "numbers",
    "operator", "random", "re", "statistics", "string", "struct", "textwrap", "time", "typing",
    "unicodedata",
)


def prepare_matplotlib() -> None:
    """matplotlib insists on a writable config dir; give it one on the process's own /tmp,
    seeded with the font cache the image build made, so nothing rebuilds it."""
    dst = "/tmp/matplotlib"
    if os.path.isdir(dst):
        return
    src = os.environ.get("SANDBOX_MPL_SEED")
    if src and os.path.isdir(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        os.makedirs(dst, exist_ok=True)
    os.environ["MPLCONFIGDIR"] = dst


class FigureHook(importlib.abc.MetaPathFinder):
    """On `import matplotlib`, seed its config dir (a lean child's /tmp is fresh); on
    `import matplotlib.pyplot`, make `show()` render every open figure to PNG (runner.show)."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001 - the MetaPathFinder protocol
        if name == "matplotlib":
            prepare_matplotlib()
            return None
        if name != "matplotlib.pyplot":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module) -> None:  # noqa: ANN001
            exec_module(module)
            module.show = runner.show

        spec.loader.exec_module = exec_and_patch  # this module's own loader instance only
        return spec


def install_hook() -> None:
    sys.meta_path.insert(0, FigureHook())


def lean() -> None:
    for name in LEAN_MODULES:
        importlib.import_module(name)


def full(modules: list[str]) -> dict[str, str | None]:
    """Import the image's preload list; return each module's version."""
    versions = {}
    for name in modules:
        mod = importlib.import_module(name)
        top = sys.modules[name.split(".")[0]]
        versions[name] = getattr(mod, "__version__", None) or getattr(top, "__version__", None)
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.show = runner.show
        _warm_matplotlib(plt, sys.modules.get("pandas"))
    return versions


def _warm_matplotlib(plt, pd) -> None:  # noqa: ANN001
    """Draw and save throwaway charts, so the renderer, fonts, layout and PNG writer every
    child needs, and pandas' plotting backend (imported on the first DataFrame.plot), are
    loaded once here instead of in every child's first figure."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="line")
    ax.bar([0, 1], [1, 2])
    ax.set_title("warm-up")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    if pd is not None:
        df = pd.read_csv(io.StringIO("region,amount\nnorth,1.5\nsouth,2.5\nnorth,3.0\n"))
        table = df.groupby("region")["amount"].agg(["sum", "mean", "count"]).sort_values("sum")
        ax = table["sum"].plot.bar(title="warm-up")
        ax.set_ylabel("amount")
        plt.tight_layout()
        ax.figure.savefig(io.BytesIO(), format="png")
        table.round(2).to_string()
        plt.close("all")
