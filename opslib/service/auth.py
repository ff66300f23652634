"""Bearer tokens for ``/v1/*``: only their SHA-256 is configured (``OPS_SERVE_TOKENS``); a
presented token is hashed and compared with every configured hash in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from opslib.settings import ServeScope, ServeToken

TOKEN_PREFIX = "bst_"  # recognisable in a leaked log line or a secret scanner


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str, scopes: Sequence[ServeScope]) -> tuple[str, ServeToken]:
    """(the token to hand to the client once, the entry to configure)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, ServeToken(name=name, sha256=token_hash(token), scopes=list(scopes))


def authenticate(tokens: Sequence[ServeToken], presented: str) -> ServeToken | None:
    """The configured token ``presented`` matches, or None. Every entry is compared (no early
    exit), so timing does not tell how close a guess came or which entry matched."""
    digest = token_hash(presented)
    found: ServeToken | None = None
    for entry in tokens:
        if hmac.compare_digest(entry.sha256, digest):
            found = entry
    return found
