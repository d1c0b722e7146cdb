"""The README's commands run as written after its first command, `make serve`.

A scratch folder stands in for a fresh clone after `make serve`: the repository's files
(symlinked) and a `.venv/` whose `python` is this interpreter, whose `bin/` holds the
`deeplense` script pip writes and an `activate`, and whose install stamps are up to date, so
`make` installs nothing (installing is tested in tests/test_makefile.py; PYTHONPATH stands
in for the editable install). The test runs `make serve` there, then every fenced bash and
python block of the README in order, each in a fresh bash with `.venv` activated, as the
README says. A later block that is a `make serve ...` command replaces the running server, as
the README asks the reader to (stop it, serve another set). Two changes to the text, both
forced by a shared test machine: the service listens on a free port (8000 may be taken), so
`localhost:8000` becomes that port; and the job-array variables of the sharded `score`
example are set, as a cluster would set them.
Blocks that cannot run here are listed in NOT_RUN with the reason and what covers them; a new
README block that is in neither list fails the test. Inline `make ...` commands are dry-run.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.serve_fixture import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINKED = ["app", "models", "deeplense", "training", "bench", "checkpoints", "examples",
          "scripts", "Makefile", "pyproject.toml", "constraints.txt", "README.md"]  # fmt: skip
FIRST_COMMAND = "make serve"
# First command of a README block (comment dropped) -> why it is not run, and what covers it.
NOT_RUN = {
    "docker compose --profile cpu up --build -d": "no Docker engine here: both profiles go "
    "through `compose config` and the Compose schema in tests/test_compose.py",
    "make bench-sim": "benchmarks run for minutes; "
    "`deeplense bench` handing arguments to a script is tested in tests/training/test_cli.py",
}
CLUSTER_ENV = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}


def readme_blocks() -> list[tuple[str, str]]:
    """(language, code) of every ```bash and ```python block, in order."""
    return re.findall(r"^```(bash|python)\n(.*?)^```$", README.read_text(), re.M | re.S)


def expected_outputs() -> dict[str, str]:
    """A block's name -> the ```text block the README shows as its expected output: the next
    fenced block, when the prose between the two starts with "Expected output"."""
    fences = list(re.finditer(r"^```(\w*)\n(.*?)^```$", README.read_text(), re.M | re.S))
    expected = {}
    for block, after in zip(fences, fences[1:], strict=False):
        prose = README.read_text()[block.end() : after.start()].strip()
        if block[1] in {"bash", "python"} and after[1] == "text" and prose.startswith("Expected"):
            expected[_key(block[2])] = after[2]
    return expected


def _key(code: str) -> str:
    """A block's name: its first line without the comment."""
    return code.splitlines()[0].split("#")[0].strip()


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scratch 'fresh clone after make serve' folder."""
    root = tmp_path_factory.mktemp("clone")
    for name in LINKED:
        (root / name).symlink_to(ROOT / name)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    _write(bin_dir / "python", f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    _write(  # what pip writes for pyproject's [project.scripts] entry (guarded: spawn safe)
        bin_dir / "deeplense",
        f"#!{sys.executable}\nimport re\nimport sys\nfrom training.__main__ import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(main())\n",
    )
    (bin_dir / "activate").write_text(
        f'VIRTUAL_ENV="{root}/.venv"\nexport VIRTUAL_ENV\nPATH="$VIRTUAL_ENV/bin:$PATH"\n'
        "export PATH\n"
    )
    later = time.time() + 60  # stamps newer than every file they depend on
    for stamp in (".torch-torch__2.13.0", ".installed-runtime", ".installed"):
        (root / ".venv" / stamp).touch()
        os.utime(root / ".venv" / stamp, (later, later))
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPLENSE_", "SLURM_"))}
    return env | {"PYTHONPATH": str(ROOT)}


class Server:
    """A `make serve ...` command of the README running in the clone, on a free port."""

    def __init__(self, clone: Path) -> None:
        self.clone, self.port = clone, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.models: dict[str, str] = {}  # /ready's models of the running server

    def start(self, command: str) -> None:
        """Stop the running server, run `command` (a `make serve ...`), wait for /ready."""
        self.stop()
        log = self.clone / "serve.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*command.split(), f"PORT={self.port}"], cwd=self.clone, env=_env(), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"`{command}`: /ready not 200 after 120 s"
            try:
                ready = httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2)
                if ready.status_code == 200:
                    self.models = ready.json()["models"]
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture(scope="module")
def server(clone: Path) -> Iterator[Server]:
    """The README's first command, `make serve`, running; later `make serve` blocks restart it."""
    assert readme_blocks()[0] == ("bash", FIRST_COMMAND + "\n")
    running = Server(clone)
    try:
        running.start(FIRST_COMMAND)
        yield running
    finally:
        running.stop()


def run_block(clone: Path, port: int, language: str, code: str) -> str:
    """One README block in bash with .venv activated; its stdout (fails on a non-zero exit)."""
    code = code.replace("localhost:8000", f"localhost:{port}")
    if language == "python":
        code = f"python - <<'PYTHON'\n{code}PYTHON\n"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"source .venv/bin/activate\n{code}"],
        cwd=clone, env=_env() | CLUSTER_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"README block failed:\n{code}\n{done.stderr[-3000:]}"
    return done.stdout


def test_every_readme_block_runs_as_written(clone: Path, server: Server) -> None:
    # The quick start serves the set for real images: the shipped Model R set, LensFit 2 (and
    # its one-step variant).
    assert server.models == {"lensfit2": "ready", "lensfit2_fast": "ready"}
    outputs: dict[str, str] = {}
    served: dict[str, set[str]] = {}
    for language, code in readme_blocks()[1:]:
        first = _key(code)
        if first in NOT_RUN:
            continue
        if first.startswith(FIRST_COMMAND):
            server.start(first)
            served[first] = set(server.models)
            outputs[first] = ""
            continue
        outputs[first] = run_block(clone, server.port, language, code)

    # The examples are Model A lenses: the README serves Model A's set (six models) for them.
    model_a = {"aae", "vae", "dcae", "rbm", "lensfit", "lensfit2"}
    assert served == {"make serve CHECKPOINTS=checkpoints/model_a": model_a}

    ready = next(out for first, out in outputs.items() if first.startswith("source .venv"))
    assert "usage: deeplense" in ready and json.loads(ready.splitlines()[-1])["ready"] is True
    # Each example's output is what the README shows: the default model flags the examples
    # with substructure and passes the normal ones.
    expected = expected_outputs()
    curl = next(f for f in outputs if f.startswith("curl -s -F"))
    scored = json.loads(outputs[curl])
    assert scored["model"] == "lensfit" and scored["score"] == "chi2_psf_light"
    flags = {r["filename"]: r["is_anomaly"] for r in scored["results"]}
    assert flags == {"vort_0.fits": True, "no_sub_0.npy": False}
    assert all(r["error"] is None for r in scored["results"])
    shown = re.findall(r'"(filename|is_anomaly)": ("?[\w.]+"?)', expected[curl])
    pairs = zip(shown[::2], shown[1::2], strict=True)
    shown_flags = {json.loads(name): json.loads(flag) for (_, name), (_, flag) in pairs}
    assert shown_flags == flags
    assert outputs["import httpx"] == expected["import httpx"]
    first_score = next(f for f in outputs if f.startswith("deeplense score"))
    assert expected[first_score] in outputs[first_score]  # "wrote ...: 12 flagged, 0 errors"
    rows = (clone / "reports" / "scores.csv").read_text().splitlines()
    images = [p for p in (ROOT / "examples").rglob("*.*") if p.suffix != ".py"]
    assert len(rows) == 1 + len(images)
    # The astronomer's upload: the cutouts' own noise map, PSF and pixel scale are used.
    astro = next(f for f in outputs if f.startswith("curl -s -F files=@examples/astronomer"))
    cutouts = {r["filename"]: r for r in json.loads(outputs[astro])["results"]}
    assert cutouts["vort_0.fits"]["is_anomaly"] is True
    assert cutouts["no_sub_0.fits"]["is_anomaly"] is False
    for result in cutouts.values():
        used = result["instrument"]
        assert {used[part]["source"] for part in ("pixel_scale", "psf", "noise")} == {"upload"}
    assert '"filename": "vort_0.fits"' in expected[astro]
    assert (clone / "reports" / "scores_0.csv").is_file()
    assert json.loads((clone / "reports" / "try" / "metrics.json").read_text())
    covered = set(outputs) | set(NOT_RUN)
    assert covered == {_key(code) for _, code in readme_blocks()[1:]}


def test_no_block_is_skipped_without_a_reason() -> None:
    firsts = {_key(code) for _, code in readme_blocks()}
    assert set(NOT_RUN) <= firsts, "NOT_RUN names a block the README no longer has"


def test_every_inline_make_command_is_a_real_target(clone: Path) -> None:
    commands = set(re.findall(r"`(make [^`]+)`", README.read_text()))
    assert {"make serve PORT=8001", "make install", "make test", "make help"} <= commands
    for command in sorted(commands):
        done = subprocess.run(
            [*command.split(), "-n"], cwd=clone, env=_env(), capture_output=True, text=True
        )
        assert done.returncode == 0, f"`{command}`: {done.stderr}"


def test_python_examples_need_only_the_service_install() -> None:
    # `make serve` installs pyproject's dependencies, not the extras: an example importing a
    # dev-only package (httpx used to be one) would fail for a newcomer.
    import tomllib
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    owners = packages_distributions()
    for language, code in readme_blocks():
        if language != "python":
            continue
        for module in re.findall(r"^(?:import|from) (\w+)", code, re.M):
            if module in sys.stdlib_module_names:
                continue
            dists = {canonicalize_name(d) for d in owners.get(module, [])}
            assert dists & runtime, f"README example imports {module}, not a runtime dependency"
