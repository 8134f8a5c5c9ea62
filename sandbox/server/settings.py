"""The service's settings, in one place: from flags, `SANDBOX_API_KEYS` and an API key file.

The quotas per key are here and nowhere else (serve.py turns each into a flag, docs/threat-model.md
lists them): their defaults are on, so a server started with no flag is already fair between keys.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InvalidInputError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
URL_SAFE_KEY = re.compile(r"[A-Za-z0-9._~-]+")   # RFC 3986 unreserved: a key /k/KEY/ carries as it is
KEY_RECIPE = "head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='"


@dataclass(frozen=True)
class Settings:
    """How `sandbox serve` runs. API keys never appear in the repr (nor anywhere in logs)."""

    host: str = "127.0.0.1"
    port: int = 8080
    slots: int | None = None              # None: one per core
    image: str = "default"
    max_queue: int = 64                   # calls waiting for a slot beyond which the service answers 429
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = 64 << 20        # requests larger than this get 413 before they are read
    retry_after_seconds: int = 1          # the Retry-After of a 429
    shutdown_grace_seconds: float = 5.0   # runs in flight get this long at shutdown, then are killed
    mcp: bool = True                      # serve MCP at /mcp
    # Quotas per API key (the engine's own caps stay global on top of them). Beyond each: 429 + Retry-After.
    max_sessions_per_key: int = 4         # sessions one key may hold open (the engine admits 16 at the default limits)
    # One key's calls in the engine at once (running or queued for a slot). None: the number of
    # slots, so a key's flood never holds more than the slots and another key's first call waits
    # at most one run per slot (the pool's own queue is first come, first served).
    max_runs_per_key: int | None = None
    # ...shared out among the keys active within this many seconds: each gets its share of those
    # places, so while another key is calling, a flood keeps a slot free for it (quotas.py). 0: off.
    share_window_seconds: float = 30.0
    max_waiting_per_key: int = 32         # one key's calls waiting (without a thread) for one of those places
    max_waiting_per_session: int = 4      # calls waiting behind the one a session runs (each session runs one at a time)
    max_mcp_sessions_per_key: int = 8     # MCP sessions (Mcp-Session-Id) one key may hold open
    peer_spaces_per_key: int = 256        # E2B contexts + LibreChat sessions one key keeps (its oldest go first)
    peer_bytes_per_key: int = 64 << 20    # bytes of files they keep for one key (its oldest spaces go first)
    # The HTTP server itself.
    max_connections: int = 1024           # connections and tasks uvicorn serves at once (beyond: 503)
    # ...of them from one client address (beyond: 503 at once; 0: no cap, for a proxy on this host).
    max_connections_per_client: int = 256
    backlog: int = 2048                   # connections the kernel queues before uvicorn accepts them
    keep_alive_seconds: int = 5           # an idle keep-alive connection is closed after this
    head_timeout_seconds: float = 10.0    # a request's head must arrive within this (connections.py: slowloris)
    body_timeout_seconds: float = 120.0   # ...and its body within this of the head (64 MiB at ~0.5 MiB/s)
    write_stall_seconds: float = 30.0     # a response nobody reads for this long is dropped
    key_file: str | None = None           # --api-key-file, read again on SIGHUP
    ssl_certfile: str | None = None       # TLS: uvicorn serves HTTPS with these
    ssl_keyfile: str | None = None
    insecure_http: bool = False           # the operator's explicit yes to plain HTTP beyond loopback
    unix_socket: str | None = None        # also (or only: tcp=False) serve on this Unix socket (unix.py)
    tcp: bool = True                      # listen on host:port

    @property
    def tls(self) -> bool:
        return bool(self.ssl_certfile)

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)

    def with_keys_from(self, key_file: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
        """Add keys from `SANDBOX_API_KEYS` (comma or whitespace separated) and a key file (one a line,
        blank lines and `#` comments skipped)."""
        env = os.environ if environ is None else environ
        keys = list(self.api_keys) + env.get("SANDBOX_API_KEYS", "").replace(",", " ").split()
        if key_file is not None:
            try:
                text = Path(key_file).read_text()
            except OSError as exc:
                raise InvalidInputError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
            in_file = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            if not in_file:
                raise InvalidInputError(f"the API key file {key_file} holds no API key (only blank lines or comments): "
                                        f"add one a line, made with: {KEY_RECIPE}")
            keys += in_file
        for n, k in enumerate(keys, 1):
            if len(k) < 16 or not k.isascii() or not k.isprintable():
                raise InvalidInputError("every API key must be at least 16 printable ASCII characters")
            if not URL_SAFE_KEY.fullmatch(k):  # never name the key itself: this message goes to a log
                raise InvalidInputError(
                    f"API key #{n} has characters a URL path cannot carry as they are (only letters, digits and "
                    f"'-', '_', '.', '~' can: the /k/KEY/ routes put the key in the path). Make keys with: {KEY_RECIPE}")
        return replace(self, api_keys=tuple(dict.fromkeys(keys)))

    def reload_keys(self) -> Settings:
        """The same settings with the keys read again (SIGHUP): the key file as it is now, and
        `SANDBOX_API_KEYS`. InvalidInputError (and the old keys stay) if the file is unreadable,
        empty, or holds a bad key."""
        return replace(self, api_keys=()).with_keys_from(self.key_file)

    def check_bind(self) -> None:
        """Refuse to listen beyond loopback without an API key (anyone who can reach the port could run
        code), and beyond loopback over plain HTTP (the keys would travel in clear) unless the operator
        says so with --insecure-http (a TLS proxy in front, a private network)."""
        if not self.auth_required and not is_loopback(self.host):
            raise InvalidInputError(
                f"refusing to listen on {self.host} without an API key: anyone who reaches it could run code. "
                "Give keys with --api-key-file FILE or SANDBOX_API_KEYS, or listen on 127.0.0.1")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise InvalidInputError("--ssl-certfile and --ssl-keyfile go together: give both")
        if not self.tls and not self.insecure_http and not is_loopback(self.host):
            raise InvalidInputError(
                f"refusing to listen on {self.host} over plain HTTP: API keys would cross the network in clear. "
                "Give --ssl-certfile and --ssl-keyfile, or put a TLS proxy in front and listen on 127.0.0.1, or, "
                "if the network is yours, say so with --insecure-http")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
