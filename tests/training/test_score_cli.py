"""`python -m training score`: CSV rows equal direct scores, shards, errors, atomic output."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from deeplense.errors import DeviceError
from deeplense.imaging import read_image
from deeplense.inference import score_array, score_observations
from deeplense.instrument import Instrument
from deeplense.observation import prepare_observation
from deeplense.preprocess import to_model_input
from models.checkpoint import load_checkpoint
from tests.conftest import TINY_SIZE, tiny_images
from training.__main__ import main
from training.batch_score import CSV_COLUMNS, parse_shard, score_files, shard_files
from training.parallel_score import ScoringPool

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_files(root: Path) -> Path:
    """A folder with a 2-D npy, a 3-image stack (one image with an infinite pixel), a FITS
    image, a resized PNG,
    a corrupt file and a 2-image FITS cube."""
    root.mkdir(parents=True)
    images = tiny_images(6, seed=5)[:, 0]  # (6, 32, 32)
    np.save(root / "a_single.npy", images[0])
    stack = images[1:4].copy()
    stack[1, 3, 3] = np.inf  # refused (NaN would be a mask)
    np.save(root / "b_stack.npy", stack)
    fits.PrimaryHDU(images[4] * 1000.0).writeto(root / "c_image.fits")
    png = Image.fromarray((np.kron(images[5], np.ones((2, 2))) * 255).astype(np.uint8))
    png.save(root / "d_big.png")  # 64x64: resized to 32
    (root / "e_corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    fits.PrimaryHDU(images[:2] * 7.0).writeto(root / "f_cube.fits")  # a (2, 32, 32) cube
    (root / "notes.txt").write_text("not an image: skipped inside a folder")
    return root


def run_score(checkpoints: Path, out: Path, *extra: str) -> int:
    return main(["score", "--checkpoints", str(checkpoints), "--model", "dcae",
                 "--out", str(out), "--device", "cpu", *extra])  # fmt: skip


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_csv_numbers_equal_direct_scores(
    tiny_checkpoints: Path, tmp_path: Path, batch_size: int
) -> None:
    folder = make_files(tmp_path / "images")
    out = tmp_path / "scores.csv"
    assert run_score(tiny_checkpoints, out, str(folder), "--batch-size", str(batch_size)) == 0
    rows = {r["filename"]: r for r in read_rows(out)}
    stack_names = [f"{folder}/b_stack.npy[{k}]" for k in range(3)]
    names = [f"{folder}/a_single.npy", *stack_names, f"{folder}/c_image.fits",
             f"{folder}/d_big.png", f"{folder}/e_corrupt.npy", f"{folder}/f_cube.fits[0]",
             f"{folder}/f_cube.fits[1]"]  # fmt: skip
    assert list(rows) == names  # file order, stack images in order, txt skipped

    loaded = load_checkpoint(tiny_checkpoints / "dcae")
    cal = loaded.config.calibration
    assert cal is not None
    stack = np.load(folder / "b_stack.npy")
    direct = {
        names[0]: read_image(folder / "a_single.npy"),
        names[1]: stack[0],
        names[3]: stack[2],
        names[4]: read_image(folder / "c_image.fits"),
        names[5]: read_image(folder / "d_big.png"),
        names[7]: fits.getdata(folder / "f_cube.fits")[0].astype(np.float32),
        names[8]: fits.getdata(folder / "f_cube.fits")[1].astype(np.float32),
    }
    # Scored one at a time here: with --batch-size 1 the CSV holds the very same numbers (the
    # floats round-trip through repr); in bigger batches float32 reductions may differ in
    # the last bits, so those are compared to 1e-6.
    exact = batch_size == 1
    for name, image in direct.items():
        x, resized = to_model_input(image, 32, name)
        scored = score_array(loaded.model, x[None])
        row = rows[name]
        for column, value in (("reconstruction_loss", scored.loss[0]), ("w1", scored.w1[0])):
            if exact:
                assert float(row[column]) == value, column
            else:
                assert float(row[column]) == pytest.approx(value, rel=1e-6), column
        percentile = cal.percentile(scored.loss)[0]
        # The tiny model's normal scores are packed closely: a 1e-7 change in a loss can move
        # its percentile by 1e-4.
        assert float(row["percentile"]) == (
            percentile if exact else pytest.approx(percentile, abs=1e-2)
        )
        assert float(row["threshold"]) == cal.threshold
        assert row["is_anomaly"] == str(bool(scored.loss[0] > cal.threshold))
        assert row["resized"] == str(resized)
        assert row["error"] == ""
    assert rows[names[5]]["resized"] == "True" and rows[names[5]]["input_shape"] == "64x64"
    assert rows[names[0]]["input_shape"] == "32x32"


def test_bad_files_and_images_get_error_rows(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = make_files(tmp_path / "images")
    out = tmp_path / "scores.csv"
    assert run_score(tiny_checkpoints, out, str(folder)) == 0
    rows = {r["filename"]: r for r in read_rows(out)}
    corrupt = rows[f"{folder}/e_corrupt.npy"]
    assert "e_corrupt.npy" in corrupt["error"] and corrupt["reconstruction_loss"] == ""
    nan_row = rows[f"{folder}/b_stack.npy[1]"]
    assert "infinite" in nan_row["error"] and nan_row["is_anomaly"] == ""
    # Its neighbours in the same stack were still scored.
    assert rows[f"{folder}/b_stack.npy[0]"]["error"] == ""
    assert rows[f"{folder}/b_stack.npy[2]"]["error"] == ""
    assert sum(1 for r in rows.values() if r["error"]) == 2


def test_shards_partition_the_files(tiny_checkpoints: Path, tmp_path: Path) -> None:
    folder = make_files(tmp_path / "images")
    assert run_score(tiny_checkpoints, tmp_path / "all.csv", str(folder)) == 0
    everything = read_rows(tmp_path / "all.csv")
    shards = []
    for i in range(3):
        out = tmp_path / f"shard{i}.csv"
        assert run_score(tiny_checkpoints, out, str(folder), "--shard", f"{i}/3") == 0
        shards.append(read_rows(out))
    names = [[r["filename"] for r in rows] for rows in shards]
    assert sorted(sum(names, [])) == sorted(r["filename"] for r in everything)
    assert all(names)  # 6 files over 3 shards: none empty
    # Whole files go to one shard: the three stack images stay together.
    stack_shards = {i for i, ns in enumerate(names) for n in ns if "b_stack" in n}
    assert len(stack_shards) == 1
    # Same numbers whichever way the files were split.
    by_name = {r["filename"]: r for r in everything}
    for rows in shards:
        for r in rows:
            whole = by_name[r["filename"]]
            for column in CSV_COLUMNS:
                if column in ("reconstruction_loss", "anomaly_score", "w1") and r[column]:
                    assert float(r[column]) == pytest.approx(float(whole[column]), rel=1e-6)
                elif column == "percentile" and r[column]:
                    assert float(r[column]) == pytest.approx(float(whole[column]), abs=1e-2)
                else:
                    assert r[column] == whole[column], column


def test_shard_files_is_deterministic_modulo_split() -> None:
    files = [Path(f"f{i}") for i in range(10)]
    assert shard_files(files, 1, 4) == [Path("f1"), Path("f5"), Path("f9")]
    assert parse_shard("2/5") == (2, 5)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0", "1/2/3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_bad_shard_is_a_one_line_usage_error(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        run_score(tiny_checkpoints, tmp_path / "s.csv", str(tmp_path), "--shard", "4/4")
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--shard" in last and "0 <= i < n" in last


def test_existing_output_is_refused_unless_overwrite(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "one.npy"
    np.save(image, tiny_images(1)[0, 0])
    out = tmp_path / "scores.csv"
    out.write_text("precious\n")
    assert run_score(tiny_checkpoints, out, str(image)) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "precious\n"
    assert run_score(tiny_checkpoints, out, str(image), "--overwrite") == 0
    assert len(read_rows(out)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_threshold_override_and_unknown_model(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "one.npy"
    np.save(image, tiny_images(1)[0, 0])
    out = tmp_path / "scores.csv"
    assert run_score(tiny_checkpoints, out, str(image), "--threshold", "0") == 0
    (row,) = read_rows(out)
    assert row["threshold"] == "0.0" and row["is_anomaly"] == "True"
    code = main(["score", "--checkpoints", str(tiny_checkpoints), "--model", "nope",
                 "--out", str(tmp_path / "x.csv"), str(image)])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "dcae" in err
    assert not (tmp_path / "x.csv").exists()


def test_missing_path_is_a_clean_error(
    tiny_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_score(tiny_checkpoints, tmp_path / "s.csv", str(tmp_path / "absent")) == 2
    assert "absent" in capsys.readouterr().err


def test_sigterm_removes_the_temp_csv(tiny_checkpoints: Path, tmp_path: Path) -> None:
    # Issue 12: SIGTERM left the hidden .tmp file behind. Many files, so scoring is under way
    # (the temp file exists) when the signal comes.
    folder = tmp_path / "many"
    folder.mkdir()
    image = tiny_images(1, seed=1)[0, 0]
    for i in range(3000):
        np.save(folder / f"{i:05d}.npy", image)
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "training", "score", str(folder), "--checkpoints",
               str(tiny_checkpoints), "--model", "dcae", "--out", str(out), "--device", "cpu",
               "--batch-size", "1"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".scores.csv.*.tmp")):
        assert proc.poll() is None and time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM)"
    assert not out.exists()
    assert list(tmp_path.glob(".scores.csv*")) == []


def test_files_decode_in_a_worker_within_a_time_limit(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    # Issue 20, D5: the CLI decoded in-process without a time limit (a 20 MiB slow file ran
    # about 11 minutes). Now a file past --decode-timeout-s gets an error row and the rest
    # are still scored; .npy files stay in this process.
    folder = make_files(tmp_path / "images")
    out = tmp_path / "scores.csv"
    assert run_score(tiny_checkpoints, out, str(folder), "--decode-timeout-s", "1e-9") == 0
    rows = {r["filename"]: r for r in read_rows(out)}
    fits_row = rows[str(folder / "c_image.fits")]
    assert "--decode-timeout-s" in fits_row["error"]
    assert rows[str(folder / "a_single.npy")]["error"] == ""


def test_the_timed_decoder_reads_a_cube_with_its_worker(tmp_path: Path) -> None:
    from deeplense.decode_client import TimedDecoder

    cube = tiny_images(3, seed=2)[:, 0]
    fits.PrimaryHDU(cube).writeto(tmp_path / "cube.fits")
    decoder = TimedDecoder(timeout_s=60.0, memory_bytes=2 << 30)
    try:
        stack = decoder.decode(tmp_path / "cube.fits", "cube.fits", 4096 * 4096)
        assert decoder._worker is not None and decoder._worker.pid > 0
    finally:
        decoder.close()
    np.testing.assert_array_equal(stack.pixels, cube.astype(np.float32))


def test_a_temp_file_left_by_a_killed_run_is_swept(tiny_checkpoints: Path, tmp_path: Path) -> None:
    image = tmp_path / "one.npy"
    np.save(image, tiny_images(1, seed=1)[0, 0])
    out = tmp_path / "scores.csv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".scores.csv.{dead.stdout.strip()}.abc123.tmp"  # its pid is gone
    stale.write_text("half a CSV")
    assert run_score(tiny_checkpoints, out, str(image)) == 0
    assert not stale.exists() and out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("model", ["dcae", "lensfit2"])
def test_workers_give_the_rows_of_one_process(
    tiny_checkpoints: Path, tmp_path: Path, model: str
) -> None:
    """--workers 2 cuts every batch between two one-thread processes: the same rows, in the
    same order, errors included; the numbers to float rounding (another thread count)."""
    folder = make_files(tmp_path / "images")
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    common = ["score", "--checkpoints", str(tiny_checkpoints), "--model", model,
              "--device", "cpu", "--batch-size", "3", str(folder)]  # fmt: skip
    assert main([*common, "--out", str(one)]) == 0
    assert main([*common, "--out", str(two), "--workers", "2"]) == 0
    single, parallel = read_rows(one), read_rows(two)
    assert [r["filename"] for r in parallel] == [r["filename"] for r in single]
    assert sum(1 for r in parallel if r["error"]) == 2
    for a, b in zip(single, parallel, strict=True):
        for column in CSV_COLUMNS:
            if column in ("percentile", "is_anomaly"):  # the tiny calibration is packed tight
                continue
            try:
                expected = float(a[column])
            except ValueError:  # text, or empty
                assert b[column] == a[column], column
                continue
            # p-values and sigmas amplify a chi2's last digits in the tail: looser there
            rel = 1e-2 if column in ("p_value", "significance_sigma") else 1e-4
            assert float(b[column]) == pytest.approx(expected, rel=rel, abs=1e-12), column


def test_workers_get_the_next_batch_before_a_batch_is_collected(
    tiny_checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --workers, score_files queues batch k+1 before it waits for batch k, so the
    processes never idle while the parent reads files; rows still come in file order."""
    import training.batch_score as batch_score

    events: list[str] = []
    loaded = load_checkpoint(tiny_checkpoints / "dcae")

    class Pending:
        def __init__(self, k: int, observations: list) -> None:
            self.k, self.observations = k, observations

        def result(self) -> object:
            events.append(f"collect {self.k}")
            return score_observations(loaded.model, self.observations, scores=["mse"])

    class RecordingPool:
        def __init__(self, *args: object) -> None:
            self.submitted = 0

        def submit(self, observations: list, batch_size: int, scores: list) -> Pending:
            events.append(f"submit {self.submitted}")
            self.submitted += 1
            return Pending(self.submitted - 1, observations)

        def close(self) -> None:
            events.append("close")

    monkeypatch.setattr(batch_score, "ScoringPool", RecordingPool)
    files = []
    for i, image in enumerate(tiny_images(5, seed=9)[:, 0]):
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], image)
    rows = list(score_files(loaded, files, device="cpu", batch_size=2, workers=2, progress=False))
    assert [r.filename for r in rows] == [str(f) for f in files]
    assert all(r.error is None for r in rows)
    assert events == ["submit 0", "submit 1", "collect 0", "submit 2", "collect 1", "collect 2",
                      "close"]  # fmt: skip


def test_workers_need_the_cpu(tiny_checkpoints: Path, tmp_path: Path) -> None:
    image = tmp_path / "one.npy"
    np.save(image, tiny_images(1)[0, 0])
    loaded = load_checkpoint(tiny_checkpoints / "dcae")
    with pytest.raises(DeviceError, match="--workers 2"):
        next(score_files(loaded, [image], device="cuda", workers=2, progress=False))


def test_a_dead_worker_is_an_error_not_a_hang(tiny_checkpoints: Path) -> None:
    """A worker killed (the OOM killer's usual pick) ends the scoring with an error."""
    observations = [
        prepare_observation(image, TINY_SIZE, Instrument(), f"image{i}")
        for i, image in enumerate(tiny_images(4, seed=6)[:, 0])
    ]
    with ScoringPool(tiny_checkpoints / "dcae", workers=2) as pool:
        assert len(pool.score(observations, 2, ["mse"]).loss) == 4
        pids = pool.pids()
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        time.sleep(2)  # the executor notices a death at once; this leaves it the time
        with pytest.raises(RuntimeError, match="scoring process died"):
            pool.score(observations, 2, ["mse"])
    for pid in pids:  # closed: no process left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_that_cannot_load_the_checkpoint_is_an_error(tmp_path: Path) -> None:
    observation = prepare_observation(tiny_images(1)[0, 0], TINY_SIZE, Instrument(), "one")
    with (
        ScoringPool(tmp_path / "absent", workers=1) as pool,
        pytest.raises(RuntimeError, match="could not start"),
    ):
        pool.score([observation], 1, ["mse"])


def test_workers_end_when_their_parent_is_killed(tiny_checkpoints: Path) -> None:
    """SIGKILL (the OOM killer) skips every clean-up; the workers notice and exit."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from deeplense.instrument import Instrument\n"
        "from deeplense.observation import prepare_observation\n"
        "from tests.conftest import TINY_SIZE, tiny_images\n"
        "from training.parallel_score import ScoringPool\n"
        "pool = ScoringPool(Path(sys.argv[1]), workers=2)\n"
        "images = tiny_images(2)[:, 0]\n"
        "obs = [prepare_observation(i, TINY_SIZE, Instrument(), 'x') for i in images]\n"
        "pool.score(obs, 1, ['mse'])\n"
        "print(*pool.pids(), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tiny_checkpoints / "dcae")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()  # not communicate(): orphaned workers would hold the pipe
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if _running(p)]
    for pid in alive:  # leave nothing behind when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())
