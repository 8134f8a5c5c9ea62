"""`sandbox packages list|add|remove|prune`: the operator's view of the package cache
(host/packages.py), with no Sandbox started. `add` downloads even when the policy's `download`
is off: that is how an operator fills the cache of a host whose tenants may not download."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import InvalidInputError, SandboxError
from .host import image as images
from .host.packages import PackageStore
from .limits import PackageSettings

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_OTHER = 0, 1, 2, 3


def _say(msg: str) -> None:
    print(f"sandbox: {msg}", file=sys.stderr, flush=True)


def store(image: str) -> PackageStore:
    return PackageStore(images.load_any(image), PackageSettings.from_policy())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _list(st: PackageStore, args: argparse.Namespace) -> None:
    """One line a set (key, size, last use, packages) and a total on stderr; `--json`: the sets as JSON."""
    sets = st.sets()
    if args.json:
        print(json.dumps(sets, indent=2))
        return
    for s in sets:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["last_used"]))
        pkgs = " ".join(f"{n}=={v}" for n, v in sorted(s["packages"].items()))
        print(f"{s['key'][:12]}  {_size(s['size']).rjust(10)}  used {used}  {pkgs}")
    total = sum(s["size"] for s in sets)
    _say(f"{len(sets)} set(s), {_size(total)} in {st.root} (cap {_size(st.settings.max_cache_bytes)})")


def _add(st: PackageStore, args: argparse.Namespace) -> None:
    """Resolve and cache the named packages as the operator (downloads even with `download` off)."""
    found = st.prepare(args.names, progress=lambda line: _say(line), operator=True)
    if found is None:
        _say("nothing to add: the image already has every package named")
    else:
        _say(f"set {found.key[:12]} ({_size(found.size)}, {'cached' if found.cached else 'new'}): "
             + ", ".join(f"{n}=={v}" for n, v in sorted(found.packages.items())))


def _remove(st: PackageStore, args: argparse.Namespace) -> None:
    gone = st.remove(args.names)
    _say(f"removed {len(gone)} set(s)" + (": " + ", ".join(k[:12] for k in gone) if gone else ""))


def _prune(st: PackageStore, args: argparse.Namespace) -> None:
    gone = st.prune(args.days)
    _say(f"pruned {len(gone)} set(s) unused for {args.days:g} days")


SUBCOMMANDS = {"list": _list, "add": _add, "remove": _remove, "prune": _prune}


def cmd_packages(args: argparse.Namespace) -> int:
    """Run one subcommand. Exit status: 0 done; 2 bad input (a name the policy refuses, ...); 3 any
    other engine error (no image, a failed download, ...), said on stderr."""
    try:
        SUBCOMMANDS[args.packages_command](store(args.image), args)
    except SandboxError as exc:
        _say(str(exc))
        return EXIT_USAGE if isinstance(exc, InvalidInputError) else EXIT_OTHER
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    pk = sub.add_parser("packages", help="the package cache behind packages on demand (list, add, remove, prune)")
    pk.add_argument("--image", default="default", help="image whose interpreter the sets are for (default: default)")
    psub = pk.add_subparsers(dest="packages_command", required=True)
    ls = psub.add_parser("list", help="the cached package sets, with their size and last use")
    ls.add_argument("--json", action="store_true", help="print them as JSON")
    add = psub.add_parser("add", help="resolve, download and unpack packages into the cache (even with download off)")
    add.add_argument("names", nargs="+", metavar="NAME", help="requirement, e.g. humanize or 'polars>=1'")
    rm = psub.add_parser("remove", help="remove every cached set that holds one of these packages")
    rm.add_argument("names", nargs="+", metavar="NAME")
    pr = psub.add_parser("prune", help="remove the sets unused for some days")
    pr.add_argument("--days", type=float, default=30.0, help="unused for this many days (default 30)")
    pk.set_defaults(func=cmd_packages)
