"""The fit command under torchrun: 2 CPU processes, gloo backend, DistributedDataParallel."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import models
from deeplense.inference import score_array
from models.checkpoint import load_checkpoint
from tests.conftest import tiny_images

REPO = Path(__file__).resolve().parents[2]
TINY_ARCH = ["--tiny"]  # every model at its Config.tiny()


def test_two_process_ddp_on_cpu_writes_valid_checkpoints(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for split, n, seed in [("train", 32, 1), ("val", 10, 2)]:
        (data / split).mkdir(parents=True)
        np.save(data / split / "no_sub.npy", tiny_images(n, seed=seed)[:, 0])
    out = tmp_path / "ckpt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "training", "fit", "--model", "all", "--data", str(data), "--out", str(out),
        "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--seed", "5", *TINY_ARCH,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only rank 0 writes: one summary line per model, not two.
    assert result.stdout.count("dcae: ") == 1, result.stdout
    assert sorted(p.name for p in out.iterdir()) == models.list_models()
    for name in models.list_models():
        loaded = load_checkpoint(out / name)
        facts = loaded.config.training
        assert facts.extra["world_size"] == 2
        assert facts.extra["global_batch_size"] == 16
        assert facts.device == "cpu x2"
        assert facts.n_train == 32
        # 32 images over 2 ranks in batches of 8: 2 steps per rank and epoch.
        assert [h["epoch"] for h in facts.extra["history"]] == [1, 2]
        assert loaded.config.calibration is not None
        assert loaded.config.calibration.n_images == 10
        scores = score_array(loaded.model, tiny_images(4, seed=9)).loss
        assert np.isfinite(scores).all()


SYNC_SCRIPT = """
import os, sys
import torch, torch.distributed as dist
import models
from training.steps import Distributed, Precision, make_step
from tests.conftest import tiny_images, tiny_model

dist.init_process_group("gloo")
rank = Distributed.from_env()
for name in models.list_models():
    model = tiny_model(name).train()
    step = make_step(model, 2e-3, 1e-5, 10, Precision("cpu"), rank)
    torch.manual_seed(rank.rank)
    for i in range(2):  # each rank sees other images
        step(torch.from_numpy(tiny_images(8, seed=10 * rank.rank + i)))
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    both = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(both, flat)
    if rank.rank == 0:
        print(name, "same" if torch.equal(both[0], both[1]) else "DIFFERENT")
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # no finalisation: gloo's leftover thread can abort it (training/__main__.py)
"""


def test_ddp_steps_keep_every_rank_on_the_same_weights(tmp_path: Path) -> None:
    """Different data per rank, yet identical weights after each step: gradients are shared."""
    script = tmp_path / "sync.py"
    script.write_text(SYNC_SCRIPT)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(script),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.strip())
    assert lines == [f"{name} same" for name in models.list_models()]
