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
import io
import os
import shutil
import sys

from . import display, ipython_shim, runner

# Imported once in the zygote before the lean fork server is forked (each costs a child
# nothing; not importing them would cost each program that needs them a millisecond or more).
LEAN_MODULES = (
    "abc", "array", "bisect", "collections", "contextlib", "copy", "dataclasses", "datetime", "decimal",
    "enum", "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math", "multiprocessing",
    "numbers",
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


class FigureHook:
    """On `import matplotlib`, seed its config dir (a lean child's /tmp is fresh); on
    `import matplotlib.pyplot`, make `show()` render every open figure to PNG (runner.show).
    A meta path finder by its find_spec alone: importlib.abc costs every jail's start about
    18 ms of imports (importlib.resources, pathlib, tempfile, typing)."""

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
        _warm_matplotlib(plt)
    display.install()  # Image.show(), fig.show() and chart.show() display, patched once here
    ipython_shim.install()  # `from IPython.display import ...` where the image has no IPython
    return versions


def _warm_matplotlib(plt) -> None:  # noqa: ANN001
    """Draw and save one throwaway chart, so the renderer, fonts and PNG writer every child
    needs are loaded once here instead of in every child's first figure. (Drawing a pandas
    chart here too was measured: no faster charts in the children, 3.5 MiB more per slot.)"""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="line")
    ax.bar([0, 1], [1, 2])
    ax.set_title("warm-up")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    display.chart_of_figure(fig)  # and its chart data, whose first extraction costs ~10 ms
    plt.close(fig)
