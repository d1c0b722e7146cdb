"""The house's shape: the import graph has floors, and the service stays thin.

deeplense (the ground floor) imports none of the project's other packages; models imports
only deeplense; app and training sit on top and never import each other (bar the `serve`
command, which starts the app). Parsed from the source, so an import inside a function
counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deeplense", "models", "app", "training", "bench", "tests")
# package -> the project packages it must never import
FORBIDDEN = {
    "deeplense": {"models", "app", "training", "bench", "tests"},
    "models": {"app", "training", "bench", "tests"},
    "app": {"training", "bench", "tests"},
    "training": {"bench", "tests"},
}
ALLOWED = {("training/commands/serve.py", "app")}  # `deeplense serve` starts the app


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for name in sorted(imported_packages(path) & FORBIDDEN[package]):
            if (relative, name) not in ALLOWED:
                found.append(f"{relative} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_from_a_floor_above(package: str) -> None:
    assert violations(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from models.base import AnomalyModel\n    import app.main\n")
    assert imported_packages(module) >= {"models", "app"}


APP_MAX_LINES = 250  # a thin service: no file in app/ grows into a god object


def test_every_app_file_is_short() -> None:
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in sorted((ROOT / "app").rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > APP_MAX_LINES
    }
    assert long == {}
