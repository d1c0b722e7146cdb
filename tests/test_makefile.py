"""The Makefile's install logic, dry-run by make itself (`make -n`) in a scratch copy."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = ["Makefile", "pyproject.toml", "constraints.txt", "scripts/install-system-deps.sh"]


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A copy of the build files with a venv already installed for the default TORCH_PIN."""
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/bin/true")
    stamps = [".torch-torch__2.13.0", ".installed-runtime", ".installed"]
    for i, stamp in enumerate(stamps):  # each newer than what it depends on
        (venv / stamp).touch()
        later = time.time() + 60 + i
        os.utime(venv / stamp, (later, later))
    return tmp_path


def dry_run(folder: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["make", "-n", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_installed_venv_installs_nothing(installed: Path) -> None:
    plan = dry_run(installed, "serve")
    assert "pip install" not in plan
    assert "-m training serve --host 127.0.0.1 --port 8000" in plan


def test_serve_listens_on_this_machine_only_unless_told(installed: Path) -> None:
    # A shell's own HOST variable (tcsh exports the machine's name) must not open it up.
    assert "--host 127.0.0.1 " in dry_run(installed, "serve", env={"HOST": "lens-box"})
    assert "--host 0.0.0.0 --port 8000" in dry_run(installed, "serve", "HOST=0.0.0.0")


def test_docker_test_is_listed_and_runs_the_script_with_the_venvs_python(
    installed: Path,
) -> None:
    listing = subprocess.run(["make", "help"], cwd=installed, capture_output=True, text=True)
    assert "make docker-test" in listing.stdout
    assert "PY=.venv/bin/python bash scripts/docker-test.sh" in dry_run(installed, "docker-test")


def test_another_torch_pin_reinstalls_torch(installed: Path) -> None:
    plan = dry_run(installed, "serve", "TORCH_PIN=torch")
    assert "pip install -q --force-reinstall --constraint constraints.txt 'torch'" in plan
    assert "pip install -q --constraint constraints.txt -e ." in plan  # then the project again


def test_a_changed_constraints_file_reinstalls_the_project(installed: Path) -> None:
    later = (installed / ".venv" / ".installed").stat().st_mtime + 10
    os.utime(installed / "constraints.txt", (later, later))
    plan = dry_run(installed, "serve")
    assert "--force-reinstall" not in plan
    assert "pip install -q --constraint constraints.txt -e ." in plan


def test_port_picks_another_port(installed: Path) -> None:
    assert "--port 8001" in dry_run(installed, "serve", "PORT=8001")


def test_the_tests_run_in_parallel(installed: Path) -> None:
    assert "-m pytest -q -n auto" in dry_run(installed, "test")


def test_constraints_pin_every_dependency_but_torch() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        direct += extra
    names = {canonicalize_name(Requirement(r).name) for r in direct}
    assert "torch" not in pins  # TORCH_PIN / the Dockerfile's TORCH_VERSION pin it
    assert names - {"torch"} <= set(pins), sorted(names - {"torch"} - set(pins))


def test_the_tests_run_on_the_locked_versions() -> None:
    from importlib import metadata

    drift = []
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                installed = "missing"
            if installed != version:
                drift.append(f"{name}: locked {version}, installed {installed}")
    assert drift == [], "run `make install` (or `make lock` after a deliberate change)"
