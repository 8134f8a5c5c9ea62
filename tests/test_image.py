"""The image: the seed libraries are installed with versions, preloaded, and work."""

from __future__ import annotations

import json
import re

from _helpers import png_size, run_ok

# distribution name -> import name
SEED = {
    "altair": "altair",
    "chess": "chess",
    "opencv-python-headless": "cv2",
    "matplotlib": "matplotlib",
    "mpmath": "mpmath",
    "numpy": "numpy",
    "pandas": "pandas",
    "pdfminer.six": "pdfminer",
    "reportlab": "reportlab",
    "seaborn": "seaborn",
    "scikit-learn": "sklearn",
    "statsmodels": "statsmodels",
    "striprtf": "striprtf",
    "sympy": "sympy",
    "tabulate": "tabulate",
    "scipy": "scipy",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_manifest_lists_every_seed_library_with_a_version(sb):
    info = sb.image_info()
    packages = {_norm(k): v for k, v in info["packages"].items()}
    for dist in SEED:
        assert _norm(dist) in packages, f"{dist} missing from the image manifest"
        assert re.match(r"^\d", str(packages[_norm(dist)])), (dist, packages[_norm(dist)])
    assert re.fullmatch(r"3\.\d+\.\d+", info["python_version"])
    assert set(info["preload"]) >= {"numpy", "pandas", "matplotlib.pyplot"}


def test_image_info_is_a_copy(sb):
    info = sb.image_info()
    info["packages"] = {}
    info["python_version"] = "0"
    assert sb.image_info()["python_version"] != "0"


def test_manifest_versions_match_what_runs(sb):
    info = sb.image_info()
    packages = {_norm(k): v for k, v in info["packages"].items()}
    code = ("import importlib.metadata as md, sys, json\n"
            f"dists = {list(SEED)!r}\n"
            "print(json.dumps({'python': sys.version.split()[0], 'versions': {d: md.version(d) for d in dists}}))\n")
    got = json.loads(run_ok(sb, code).stdout)
    assert got["python"] == info["python_version"]
    for dist, version in got["versions"].items():
        assert packages[_norm(dist)] == version, dist


def test_seed_libraries_are_preloaded_before_user_code(sb):
    names = sorted(set(SEED.values()) | {"matplotlib.pyplot"})
    # The check runs first, before the program imports anything itself.
    code = ("import sys\n"
            f"present = {{n: n in sys.modules for n in {names!r}}}\n"
            "import json\n"
            "print(json.dumps(present))\n"
            "import numpy  # the import line sends the program to the full fork server\n")
    present = json.loads(run_ok(sb, code).stdout)
    missing = [n for n, ok in present.items() if not ok]
    assert not missing, f"not preloaded by the zygote: {missing}"


def test_stdlib_programs_run_in_a_lean_child_that_still_imports_anything(sb):
    # A program whose import lines name only the standard library runs in a child of the lean
    # fork server: the scientific stack is not in its memory. A wrong guess costs time, never
    # correctness: imported dynamically, numpy, pandas and pyplot work there, figures included.
    code = ("import sys, json\n"
            "lean = 'numpy' not in sys.modules and 'pandas' not in sys.modules\n"
            "np = __import__('numpy'); pd = __import__('pandas')\n"
            "plt = __import__('importlib').import_module('matplotlib.pyplot')\n"
            "plt.plot(np.arange(4)); plt.show()\n"
            "print(json.dumps({'lean': lean, 'sum': int(pd.Series(np.arange(4)).sum())}))\n")
    r = run_ok(sb, code)
    assert json.loads(r.stdout) == {"lean": True, "sum": 6}
    assert len(r.images) == 1 and r.images[0].data.startswith(b"\x89PNG")


def test_seed_libraries_work(sb):
    code = r'''
import json, io
out = {}
import numpy as np, pandas as pd, scipy.stats, sympy, mpmath, chess, cv2, tabulate, altair as alt
import sklearn.linear_model, statsmodels.api as sm, seaborn as sns
from striprtf.striprtf import rtf_to_text
from reportlab.pdfgen import canvas
from pdfminer.high_level import extract_text

out["numpy"] = float(np.linalg.det(np.array([[2.0, 0], [0, 3.0]])))
out["pandas"] = int(pd.DataFrame({"a": [1, 2, 3]})["a"].sum())
out["scipy"] = round(float(scipy.stats.norm.cdf(0)), 3)
x = sympy.symbols("x")
out["sympy"] = sorted(int(s) for s in sympy.solve(x**2 - 5*x + 6, x))
mpmath.mp.dps = 20
out["mpmath"] = str(mpmath.mp.pi)[:12]
out["chess"] = chess.Board().legal_moves.count()
img = np.zeros((10, 20, 3), dtype=np.uint8)
out["cv2"] = list(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).shape)
out["tabulate"] = tabulate.tabulate([[1, 2]], headers=["a", "b"]).splitlines()[0].split()
out["altair"] = alt.Chart(pd.DataFrame({"v": [1]})).mark_bar().encode(y="v").to_dict()["mark"]["type"]
X = np.arange(10).reshape(-1, 1); y = 3 * np.arange(10) + 1
out["sklearn"] = round(float(sklearn.linear_model.LinearRegression().fit(X, y).coef_[0]), 6)
res = sm.OLS(y, sm.add_constant(X.ravel().astype(float))).fit()
out["statsmodels"] = [round(float(v), 6) for v in res.params]
out["striprtf"] = rtf_to_text(r"{\rtf1\ansi Hello RTF}").strip()
c = canvas.Canvas("doc.pdf"); c.drawString(100, 750, "Hello PDF world"); c.save()
out["pdfminer"] = extract_text("doc.pdf").strip()
sns.set_theme(); out["seaborn"] = type(sns.histplot(x=[1, 2, 2, 3])).__name__
print(json.dumps(out))
'''
    r = run_ok(sb, code)
    out = json.loads(r.stdout)
    assert out == {
        "numpy": 6.0, "pandas": 6, "scipy": 0.5, "sympy": [2, 3], "mpmath": "3.1415926535",
        "chess": 20, "cv2": [10, 20], "tabulate": ["a", "b"], "altair": "bar", "sklearn": 3.0,
        "statsmodels": [1.0, 3.0], "striprtf": "Hello RTF", "pdfminer": "Hello PDF world",
        "seaborn": "Axes",
    }
    pdf = [f for f in r.files if f.path == "doc.pdf"]
    assert pdf and pdf[0].data.startswith(b"%PDF") and pdf[0].mime_type == "application/pdf"
    assert len(r.images) == 1 and png_size(r.images[0].data) == (r.images[0].width, r.images[0].height)


def test_no_network_is_needed_to_import_everything(sb):
    # Importing the full set (including submodules not preloaded) works offline and fast paths
    # do not try to download anything (e.g. fonts, datasets).
    code = ("import sklearn.cluster, scipy.signal, statsmodels.formula.api, sympy.plotting, pandas.plotting\n"
            "import matplotlib.font_manager as fm\n"
            "print(len(fm.fontManager.ttflist) > 0)")
    assert run_ok(sb, code).stdout == "True\n"
