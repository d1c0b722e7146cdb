"""The `deeplense` command: every subcommand with --help, serve, bench, and the commands that
must run without the train extra (scikit-learn, matplotlib)."""

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.app.serve_fixture import REPO_ROOT, free_port
from training import __main__ as cli
from training.commands import COMMANDS

EXPECTED = [
    "serve",
    "simulate",
    "fit",
    "calibrate",
    "default-model",
    "retune",
    "supervise",
    "evaluate",
    "score",
    "bench",
]
# Runs `deeplense` (the console script's target) with the train extra made unimportable, as
# in the runtime-only install of `make serve` and the Docker image.
WITHOUT_TRAIN_EXTRA = (
    "import sys\n"
    "sys.modules['sklearn'] = sys.modules['matplotlib'] = None\n"
    "sys.argv[0] = 'deeplense'\n"
    "from training.__main__ import cli\n"
    "cli()\n"
)


def deeplense(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_package_installs_the_deeplense_command() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["deeplense"] == "training.__main__:cli"
    assert COMMANDS == EXPECTED


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: deeplense ")
    for name in EXPECTED:
        assert f"    {name} " in out, name


@pytest.mark.parametrize("command", EXPECTED)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: deeplense {command}" in capsys.readouterr().out


def test_help_imports_no_torch() -> None:
    # --help must answer at once: a command module imports torch (and the models) only in
    # the function that runs the command. sys.modules is the robust check; the time is loose.
    script = (
        "import sys\n"
        "from training.__main__ import main\n"
        f"for args in [['--help'], *([c, '--help'] for c in {EXPECTED!r})]:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, args\n"
        "heavy = sorted({'torch', 'models', 'scipy', 'app.main'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_help_answers_within_seconds() -> None:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "training", "fit", "--help"], cwd=REPO_ROOT, capture_output=True
    )
    assert done.returncode == 0
    assert time.monotonic() - start < 3  # about 0.5 s on 2 loaded cores; torch alone is 1.5 s


def test_flags_written_out_for_help_match_their_sources() -> None:
    # fit and simulate spell out defaults and choices so that --help imports no torch.
    from models.storage import WEIGHTS_DTYPES
    from training.commands import fit, simulate
    from training.plan import FitOptions
    from training.simulate import DATASETS, SUBSTRUCTURES
    from training.steps import PRECISIONS

    defaults = {f.name: f.default for f in dataclasses.fields(FitOptions)}
    assert {k: defaults[k] for k in vars(fit.D)} == vars(fit.D)
    assert fit.PRECISIONS == PRECISIONS and fit.WEIGHTS_DTYPES == WEIGHTS_DTYPES
    assert tuple(sorted(DATASETS)) == simulate.DATASETS
    assert simulate.SUBSTRUCTURES == SUBSTRUCTURES


def test_registry_flags_refuse_a_wrong_name_with_the_valid_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import models

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--model", "nope", "--data", "d", "--out", "o"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err
    assert all(f"'{name}'" in err for name in [*models.list_models(), "all"])


def test_python_m_training_still_works() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m training ")


def test_a_torchrun_rank_keeps_its_exit_code_and_error_line(tmp_path: Path) -> None:
    """Under torchrun (WORLD_SIZE > 1) the program ends without finalising the interpreter;
    its exit code and its one-line error still come out, flushed."""
    missing = tmp_path / "nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "training", "score", str(tmp_path), "--checkpoints",
         str(missing), "--model", "dcae", "--out", str(tmp_path / "out.csv")],
        cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "WORLD_SIZE": "2"},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {missing}: checkpoint directory not found\n"


TINY_FIT = ["--tiny"]  # every model at its Config.tiny()


def test_every_command_but_evaluate_works_without_the_train_extra(tmp_path: Path) -> None:
    # One process (torch imports once): every --help, then simulate -> fit -> calibrate ->
    # score on a tiny dataset, with scikit-learn and matplotlib unimportable throughout.
    data, ckpt, out = tmp_path / "data", tmp_path / "ckpt", tmp_path / "scores.csv"
    steps = [
        ["simulate", "--dataset", "model_a", "--out", str(data), "--n-train", "8", "--n-val",
         "8", "--n-test", "2", "--image-size", "32", "--workers", "1"],
        ["fit", "--model", "dcae", "--data", str(data), "--out", str(ckpt), "--epochs", "1",
         "--batch-size", "4", "--device", "cpu", *TINY_FIT],
        ["calibrate", "--checkpoints", str(ckpt), "--data", str(data), "--device", "cpu"],
        ["score", "--checkpoints", str(ckpt), "--model", "dcae", "--device", "cpu", "--out",
         str(out), str(data / "test")],
    ]  # fmt: skip
    script = (
        "import sys\n"
        "sys.modules['sklearn'] = sys.modules['matplotlib'] = None\n"
        "from training.__main__ import main\n"
        f"for args in [['--help'], *([c, '--help'] for c in {EXPECTED!r})]:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, args\n"
        f"for args in {steps!r}:\n"
        "    assert main(args) == 0, args\n"
        "assert sys.modules['sklearn'] is None and sys.modules['matplotlib'] is None\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("usage: ") == len(EXPECTED) + 1
    assert "wrote " + str(out) in done.stdout
    assert len(out.read_text().splitlines()) == 1 + 3 * 2  # header + 3 classes x 2 images


def test_evaluate_without_the_train_extra_says_so_in_one_line(tmp_path: Path) -> None:
    done = deeplense("evaluate", "--checkpoints", str(tmp_path), "--data", str(tmp_path),
                     "--out", str(tmp_path / "report"))  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1:] == [done.stderr.strip()]  # one line
    assert "the train extra" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_on_the_given_port_and_stops_quietly(
    tiny_checkpoints: Path, stop: signal.Signals
) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, "serve", "--port", str(port),
         "--checkpoints", str(tiny_checkpoints), "--device", "cpu"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        body = _wait_ready(f"http://127.0.0.1:{port}", proc)
        assert body["device"] == "cpu" and body["device_setting"] == "cpu"
    finally:
        proc.send_signal(stop)  # Ctrl-C or `docker stop`: the way a service is stopped
        output, _ = proc.communicate(timeout=20)  # reaps it and closes its pipe
    assert proc.returncode == 0, output
    assert "error" not in output.lower() and "Traceback" not in output, output


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            response = httpx.get(f"{url}/ready", timeout=2)
            if response.status_code == 200:
                return dict(response.json())
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/ready never answered 200")


def test_serve_with_a_bad_checkpoint_folder_fails_in_one_line(tmp_path: Path) -> None:
    done = deeplense("serve", "--port", str(free_port()), "--checkpoints", str(tmp_path))
    assert done.returncode != 0
    assert "no checkpoint folders" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_serve_with_truncated_weights_exits_1_in_one_line(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(tiny_checkpoints, tmp_path / "checkpoints"))
    weights = root / "vae" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # found while loading, in the background
    done = deeplense("--log-level", "WARNING", "serve", "--port", str(free_port()),
                     "--checkpoints", str(root), "--device", "cpu")  # fmt: skip
    assert done.returncode == 1, done.stderr
    failed = [line for line in done.stderr.splitlines() if "start-up failed" in line]
    assert len(failed) == 1 and str(weights) in failed[0], done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--port", "70000"])
    assert exit_info.value.code == 2
    assert "between 1 and 65535" in capsys.readouterr().err


def test_bench_passes_its_arguments_to_the_script() -> None:
    done = deeplense("bench", "sim", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: bench_simulate.py" in done.stdout


def test_bench_outside_a_checkout_says_where_the_scripts_are(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.commands import bench

    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path)
    assert cli.main(["bench", "train"]) == 2
    assert "source checkout" in capsys.readouterr().err
