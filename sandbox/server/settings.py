"""The service's settings, in one place: from flags, `SANDBOX_API_KEYS` and an API key file."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InvalidInputError

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


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
    max_sessions_per_key: int = 0         # sessions one key may hold open (0: only the engine's cap applies)

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
            keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        for k in keys:
            if len(k) < 16 or not k.isascii() or not k.isprintable():
                raise InvalidInputError("every API key must be at least 16 printable ASCII characters")
        return replace(self, api_keys=tuple(dict.fromkeys(keys)))

    def check_bind(self) -> None:
        """Refuse to listen beyond loopback without an API key: anyone who can reach the port could run code."""
        if not self.auth_required and not is_loopback(self.host):
            raise InvalidInputError(
                f"refusing to listen on {self.host} without an API key: anyone who reaches it could run code. "
                "Give keys with --api-key-file FILE or SANDBOX_API_KEYS, or listen on 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
