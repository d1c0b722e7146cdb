"""Every field of every response is documented: in the OpenAPI schema (a description) and in
the README (its name, in the API section)."""

import re
from pathlib import Path
from typing import Any

from app.main import create_app
from app.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _response_schemas(spec: dict[str, Any]) -> set[str]:
    """Names of the component schemas reachable from any response of any operation."""
    components = spec["components"]["schemas"]
    pending = [
        content["schema"]
        for item in spec["paths"].values()
        for operation in item.values()
        for response in operation.get("responses", {}).values()
        for content in response.get("content", {}).values()
        if "schema" in content
    ]
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen.add(name)
                    pending.append(components[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return seen


# FastAPI's own 422 body for a malformed query, documented by FastAPI.
FASTAPI_SCHEMAS = {"HTTPValidationError", "ValidationError"}


def _undocumented(spec: dict[str, Any]) -> list[str]:
    components = spec["components"]["schemas"]
    missing = []
    for name in sorted(_response_schemas(spec) - FASTAPI_SCHEMAS):
        for field, schema in components[name].get("properties", {}).items():
            ref = schema.get("$ref") or next(
                (s.get("$ref") for s in schema.get("anyOf", []) if "$ref" in s), None
            )
            described = schema.get("description") or (
                ref and components[ref.rsplit("/", 1)[-1]].get("description")
            )
            if not described:
                missing.append(f"{name}.{field}")
    return missing


def test_every_response_field_has_a_description_in_the_openapi_schema(
    settings: Settings,
) -> None:
    spec = create_app(settings).openapi()
    assert {"ScoreResponse", "ScoreResult", "Health", "Readiness"} <= _response_schemas(spec)
    assert _undocumented(spec) == []


def test_the_readme_names_every_field_of_the_score_and_probe_responses(
    settings: Settings,
) -> None:
    spec = create_app(settings).openapi()
    components = spec["components"]["schemas"]
    section = README.read_text().split("## API", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_0-9]+)`", section))
    for schema in ("ScoreResponse", "ScoreResult", "MemberScore", "Health", "Readiness"):
        missing = set(components[schema]["properties"]) - named
        assert not missing, f"README's API section does not name {schema} fields {missing}"
