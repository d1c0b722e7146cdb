"""The OpenAPI document as this deployment serves it: the `X-API-Key` security scheme is
declared only when the service runs with an API key (otherwise clients and API fuzzers
would be told to send a header nobody checks)."""

from typing import Any

from fastapi import FastAPI

from app.settings import Settings


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make `app.openapi()` drop the API-key scheme when no API key is configured."""
    if settings.api_key is not None or settings.api_keys:
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.get("components", {}).pop("securitySchemes", None)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation.pop("security", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
