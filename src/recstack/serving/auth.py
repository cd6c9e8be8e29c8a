"""Who may call what: admin operations need the admin token, client endpoints an API key if configured.

Secrets come from the environment only and are compared in constant time; they are never logged, echoed
in an error or stored: errors say what is missing, not what was expected.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

ADMIN_TOKEN_ENV = "RECSTACK_ADMIN_TOKEN"


@dataclass(frozen=True)
class Refusal:
    """Why a request may not go on: HTTP ``status`` (401 no credentials, 403 wrong or disabled)."""

    status: int
    error: str


def check_admin(headers: Mapping[str, str], environ: Mapping[str, str] = os.environ) -> Refusal | None:
    """None when ``Authorization: Bearer <token>`` carries the token of ``$RECSTACK_ADMIN_TOKEN``."""
    token = environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        return Refusal(403, f"admin operations are disabled: {ADMIN_TOKEN_ENV} is not set on the server")
    header = headers.get("authorization", "")
    if not header:
        return Refusal(401, "admin operations need 'Authorization: Bearer <admin token>'")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return Refusal(403, "invalid admin token")
    return None


def check_api_key(
    headers: Mapping[str, str], keys_env: str | None, environ: Mapping[str, str] = os.environ
) -> Refusal | None:
    """None when no API key is required (``keys_env`` unset) or ``X-API-Key`` is one of the
    comma-separated keys in ``$keys_env``."""
    if not keys_env:
        return None
    keys = [k.strip().encode() for k in environ.get(keys_env, "").split(",") if k.strip()]
    if not keys:
        return Refusal(403, f"client endpoints need an API key, but {keys_env} holds none on the server")
    given = headers.get("x-api-key", "")
    if not given:
        return Refusal(401, "this endpoint needs an 'X-API-Key' header")
    # Compare against every key (no early exit), in constant time each.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given.encode(), key)
    return None if ok else Refusal(403, "invalid API key")
