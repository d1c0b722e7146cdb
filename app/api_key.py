"""The X-API-Key check, shared by the `/score` gate (before the body is read) and the
`require_api_key` dependency (every protected route)."""

import secrets

from pydantic import SecretStr

from app.errors import InvalidApiKeyError


def check_api_key(expected: SecretStr | None, key: str | None) -> None:
    """InvalidApiKeyError unless `key` matches `expected` (no-op when no key is configured);
    compared in constant time."""
    if expected is None:
        return
    if key is None:
        raise InvalidApiKeyError("missing X-API-Key header: this service requires an API key")
    if not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise InvalidApiKeyError("invalid API key in the X-API-Key header")
