"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, checked against SHA-256 hashes
from the settings (never plaintext), each key bound to a tenant, groups and a rate limit.

Secure by default: with auth enabled and no keys, the service runs only on a loopback address
(the local demo; callers are anonymous in `auth.anonymous_tenant`, with a warning in the log) and
refuses to start on any other address. `auth.enabled: false` turns keys off everywhere, loudly.

    python -m serve_app.auth new --name ci --tenant acme --groups eng,hr   # a new key and its config
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from rag_core.access import Access

log = logging.getLogger("serve_app.auth")

KEY_PREFIX = "rag_"


def hash_key(key: str) -> str:
    """Keys are 256-bit random tokens, so an unsalted SHA-256 is enough to keep them out of configs."""
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Caller:
    name: str
    access: Access
    rate_per_minute: float
    burst: int
    admin: bool = False
    anonymous: bool = False


class AuthError(Exception):
    """Missing or wrong key (401)."""


class InsecureConfiguration(RuntimeError):
    """Refusing to serve a non-loopback address without API keys."""


class Authenticator:
    def __init__(self, auth_settings: Any):
        self.settings = auth_settings
        self._keys = [(bytes.fromhex(k.sha256), k) for k in auth_settings.keys]
        self.anonymous = Caller(
            "anonymous",
            Access.of(auth_settings.anonymous_tenant),
            auth_settings.rate_per_minute,
            auth_settings.burst,
            admin=not auth_settings.enabled,
            anonymous=True,
        )

    @property
    def requires_key(self) -> bool:
        return self.settings.enabled and bool(self._keys)

    def check_exposure(self, host: str) -> None:
        """Called at startup with the address the HTTP server listens on."""
        if not self.settings.enabled:
            log.warning("API keys are disabled (auth.enabled: false): every caller is anonymous", extra={"fields": {"host": host}})
            return
        if self._keys:
            return
        if not is_loopback(host):
            raise InsecureConfiguration(
                f"refusing to serve {host} without API keys: add auth.keys (python -m serve_app.auth new ...), "
                "listen on 127.0.0.1, or set auth.enabled: false explicitly"
            )
        log.warning("no API keys configured: anonymous access on a loopback address only", extra={"fields": {"host": host}})

    def authenticate(self, authorization: str | None, api_key: str | None) -> Caller:
        if not self.requires_key:
            return self.anonymous
        presented = api_key
        if presented is None and authorization:
            scheme, _, token = authorization.partition(" ")
            presented = token.strip() if scheme.lower() == "bearer" else None
        if not presented:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        match = None
        for stored, key in self._keys:  # every hash is compared: the time does not say which one matched
            if hmac.compare_digest(stored, digest):
                match = key
        if match is None:
            raise AuthError("invalid API key")
        return Caller(
            match.name,
            Access.of(match.tenant, match.groups),
            match.rate_per_minute or self.settings.rate_per_minute,
            match.burst or self.settings.burst,
            admin=match.admin,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make an API key: prints the key once and the config entry to add.")
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new")
    new.add_argument("--name", required=True)
    new.add_argument("--tenant", required=True)
    new.add_argument("--groups", default="", help="comma-separated")
    new.add_argument("--admin", action="store_true")
    args = parser.parse_args(argv)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    groups = [g for g in args.groups.split(",") if g]
    Access.of(args.tenant, groups)  # validates the names
    entry = {"name": args.name, "sha256": hash_key(key), "tenant": args.tenant, "groups": groups, "admin": args.admin}
    print(f"key (shown once, give it to the client): {key}", file=sys.stderr)
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
