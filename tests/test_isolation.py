"""Isolation as callers see it: every run starts from a clean slate."""

from __future__ import annotations

import json

from _helpers import run_ok

PROBE = """
import os, json, sys, builtins, numpy
seen = {
    "cwd": sorted(n for n in os.listdir('.') if n != __file__),  # the program's own file is there
    "tmp": sorted(n for n in os.listdir('/tmp') if n.startswith('leak')),
    "shm": sorted(os.listdir('/dev/shm')),
    "env": os.environ.get('LEAK_ENV'),
    "builtin": hasattr(builtins, 'LEAKED'),
    "module_attr": hasattr(numpy, 'leaked_attr'),
    "user_module": 'leaky_module' in sys.modules,
}
print(json.dumps(seen))
open('leak_cwd.txt', 'w').write('secret')
open('/tmp/leak_tmp.txt', 'w').write('secret')
open('/dev/shm/leak_shm', 'w').write('secret')
os.environ['LEAK_ENV'] = '1'
builtins.LEAKED = True
numpy.leaked_attr = 1
sys.modules['leaky_module'] = type(sys)('leaky_module')
"""

CLEAN = {"cwd": [], "tmp": [], "shm": [], "env": None, "builtin": False, "module_attr": False, "user_module": False}


def test_consecutive_runs_do_not_see_each_others_state(sb):
    # With two slots, six runs put at least three on one jail: any leak would show up.
    for _ in range(6):
        r = run_ok(sb, PROBE)
        assert json.loads(r.stdout) == CLEAN


def test_inputs_of_one_run_are_not_visible_to_the_next(sb):
    run_ok(sb, "print(1)", files={"private.csv": "a,b\n1,2\n"})
    for _ in range(3):
        assert run_ok(sb, "import os\nprint(os.listdir('.'))").stdout == "['main.py']\n"  # its own file only


def test_random_state_differs_between_runs(sb):
    code = ("import numpy as np, random, os\n"
            "print(np.random.rand(), np.random.default_rng().random(), random.random(), os.urandom(8).hex())")
    outs = [tuple(run_ok(sb, code).stdout.split()) for _ in range(4)]
    for column in zip(*outs):
        assert len(set(column)) == len(column), column


def test_working_directory_is_fresh_and_writable(sb):
    r = run_ok(sb, "import os\nprint(os.getcwd(), os.listdir('.'), os.access('.', os.W_OK))")
    cwd, rest = r.stdout.split(" ", 1)
    assert rest == "['main.py'] True\n"  # only the program's own file, as for `python main.py`
    assert cwd.startswith("/")


def test_no_network(sb):
    code = ("import socket\n"
            "try:\n"
            "    socket.create_connection(('1.1.1.1', 80), timeout=2)\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused')\n")
    assert run_ok(sb, code).stdout == "refused\n"


def test_environment_has_no_host_secrets(sb):
    import os

    r = run_ok(sb, "import os, json\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(r.stdout)
    for key, value in os.environ.items():
        if len(value) >= 8 and key not in ("PATH", "LANG", "LC_ALL", "HOME", "TERM", "SHELL", "PWD", "USER",
                                           "LOGNAME", "SHLVL", "OLDPWD", "_", "VIRTUAL_ENV", "HOSTNAME"):
            assert value not in env.values(), f"host variable {key} leaked into the jail"
