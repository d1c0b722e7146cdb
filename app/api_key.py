"""The X-API-Key check, shared by the `/score` gate (before the body is read) and the
`require_api_key` dependency (every protected route), and the client identity it gives.

A key names its client: `api_keys` maps client names to keys, and a request with one of them
is that client for `client_budget_s`, whatever address it comes from (clients behind one
proxy stay apart). The shared `api_key` cannot tell its holders apart, so its requests are
told apart by address: the peer's, or behind a proxy trusted by uvicorn's
`--forwarded-allow-ips` (env FORWARDED_ALLOW_IPS), the X-Forwarded-For client's.
"""

import secrets

from pydantic import SecretStr

from app.errors import InvalidApiKeyError
from app.settings import Settings


def keys_of(settings: Settings) -> dict[str, SecretStr]:
    """Every accepted key by client name ("" for the shared `api_key`)."""
    shared = {"": settings.api_key} if settings.api_key is not None else {}
    return shared | dict(settings.api_keys)


def check_api_key(settings: Settings, key: str | None) -> str | None:
    """The name of the client whose key `key` is ("" for the shared key; None when no key is
    configured); InvalidApiKeyError otherwise. Every key is compared, in constant time."""
    keys = keys_of(settings)
    if not keys:
        return None
    if key is None:
        raise InvalidApiKeyError("missing X-API-Key header: this service requires an API key")
    matched = None
    for name, expected in keys.items():  # no early exit: the time says nothing of which
        if secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
            matched = name
    if matched is None:
        raise InvalidApiKeyError("invalid API key in the X-API-Key header")
    return matched


def client_identity(key_name: str | None, address: str | None) -> str:
    """Who a request counts against for `client_budget_s`: its key's client, else its address."""
    return f"key {key_name}" if key_name else f"address {address or 'unknown'}"
