"""Every list of models or scores a user reads (the /score parameters in /docs and the
OpenAPI schema, the README's API table and score table, the upload page) names what the
registries hold: a new model or score must appear everywhere, and nothing stale may stay."""

import re
from pathlib import Path

from fastapi.testclient import TestClient

import models
from deeplense.scores import list_scores
from models.checkpoint import find_checkpoints
from tests.app.serve_fixture import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven"}


def _score_parameters(client: TestClient) -> dict[str, str]:
    schema = client.get("/openapi.json").json()
    parameters = schema["paths"]["/score"]["post"]["parameters"]
    return {p["name"]: p["description"] for p in parameters}


def test_the_schema_names_every_model_and_score(client: TestClient) -> None:
    described = _score_parameters(client)
    for name in [*models.list_models(), "ensemble"]:
        assert re.search(rf"\b{name}\b", described["model"]), name
    for name in list_scores():
        assert re.search(rf"\b{name}\b", described["score"]), name


def test_the_readme_api_table_names_every_model_and_score() -> None:
    row = next(line for line in README.splitlines() if line.startswith("| `POST /score`"))
    for name in [*models.list_models(), "ensemble", *list_scores()]:
        assert f"`{name}`" in row, name
    score_rows = re.findall(r"^\| `([a-z0-9_]+)` \| .* \| .* \|$", README, re.M)
    assert set(list_scores()) <= set(score_rows)


def test_the_readme_counts_the_shipped_models_right() -> None:
    # The quick start says how many models each set loads before /ready: Model R's (what
    # `make serve` serves) and Model A's (the examples').
    flat = " ".join(README.split())
    for folder, owner in (("model_r", "Model R's"), ("model_a", "Model A's")):
        shipped = NUMBERS[len(find_checkpoints(REPO_ROOT / "checkpoints" / folder))]
        assert f"({owner} {shipped}," in flat or f"; {owner} {shipped} in" in flat, owner
        for wrong in set(NUMBERS.values()) - {shipped}:
            assert f"{owner} {wrong}, " not in flat and f"{owner} {wrong} in" not in flat


def test_the_upload_page_lists_no_model_by_name() -> None:
    # The page fills its menus from GET /models at run time; a name written into the page
    # would go stale (it once offered four models while five were served).
    static: Path = REPO_ROOT / "app" / "static"
    for page in ("index.html", "app.js"):
        text = (static / page).read_text()
        for name in models.list_models():
            assert not re.search(rf"""["'`]{name}["'`]""", text), (page, name)
