"""`sandbox install-service`: the systemd unit of deploy/sandbox.service with this installation's paths.

    sudo sandbox install-service                       # /etc/systemd/system/sandbox.service
    sudo systemctl daemon-reload && sudo systemctl enable --now sandbox

It only writes the unit (and never over a different one without --force); it runs no systemctl, so
the operator sees each step. The template's paths (/opt/sandbox/.venv/bin/sandbox, the key file,
the address) are replaced by this installation's `sandbox` and the flags given.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "sandbox.service"
PLACEHOLDER_BIN = "/opt/sandbox/.venv/bin/sandbox"
PLACEHOLDER_SERVE = "--host 127.0.0.1 --port 8080 --api-key-file /etc/sandbox/keys.txt --log-format json"


def render(sandbox_bin: str, serve_args: list[str]) -> str:
    text = TEMPLATE.read_text()
    if PLACEHOLDER_BIN not in text or PLACEHOLDER_SERVE not in text:
        raise ValueError(f"{TEMPLATE} does not hold the expected ExecStart line")
    return text.replace(PLACEHOLDER_SERVE, shlex.join(serve_args)).replace(PLACEHOLDER_BIN, sandbox_bin)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("install-service", help="write the systemd unit of `sandbox serve` (deploy/sandbox.service)")
    p.add_argument("--dest", default="/etc/systemd/system", help="directory to write sandbox.service in")
    p.add_argument("--api-key-file", default="/etc/sandbox/keys.txt", help="the key file the service reads")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback: give TLS flags)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for `sandbox serve` (repeatable), e.g. --serve-arg=--slots=4")
    p.add_argument("--force", action="store_true", help="replace a different unit already there")
    p.set_defaults(func=cmd_install_service)


def cmd_install_service(args: argparse.Namespace) -> int:
    sandbox_bin = str(Path(sys.executable).with_name("sandbox"))
    serve = ["--host", args.host, "--port", str(args.port), "--api-key-file", args.api_key_file,
             "--log-format", "json", *args.serve_arg]
    text = render(sandbox_bin, serve)
    target = Path(args.dest) / "sandbox.service"
    if target.exists() and target.read_text() != text and not args.force:
        print(f"sandbox: {target} exists and differs; give --force to replace it", file=sys.stderr)
        return 2
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as exc:
        print(f"sandbox: cannot write {target}: {exc.strerror} (run as root)", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    if not Path(args.api_key_file).exists():
        print(f"next: make the key file: install -d -m 0700 {Path(args.api_key_file).parent} && "
              f"head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=' > {args.api_key_file}")
    print("then: systemctl daemon-reload && systemctl enable --now sandbox   (reload keys: systemctl reload sandbox)")
    return 0
