"""The generic training loop: fit registered models on a dataset's no_sub images.

`fit(options)` plans the run (`training.plan`), trains each requested model with the step
its registry entry declares (`training.steps`: Adam + a one-cycle schedule by default, the
AAE's three-optimiser step from `training.aae_step`), logs a validation loss per epoch on
DIR/val, then exports it (`training.export`: calibration of every score on the validation
split, reconstruction health check, `OUT/<model>/`). Nothing here depends on a model's name.

- CUDA when present: mixed precision (bf16 autocast, or fp16 with a gradient scaler where the
  GPU lacks bf16), pinned memory, non-blocking copies. CPU otherwise, in float32 (bf16
  autocast on request, `--precision bf16`). Conv weights and batches in channels_last order
  (`--no-channels-last` to turn it off): measured faster on our CPU (README, "Training speed").
- Reproducible on CPU for a seed: the model is initialised from `seed`, the batch order comes
  from (seed, epoch) and the global RNG (VAE / RBM / AAE sampling) is reseeded from
  (seed, epoch, rank) at every epoch start, so a resumed run equals an uninterrupted one
  without carrying RNG states.
- `resume`: a training state (model, optimisers, schedules, scalers, epoch, history) is saved
  after every epoch in OUT/.training_state/<model>.pt (torch.save of tensors and plain
  containers, read back with `torch.load(weights_only=True)`), removed once the checkpoint is
  written.
- Under `torchrun --nproc_per_node=K` (WORLD_SIZE > 1) it trains with
  DistributedDataParallel: nccl on CUDA, gloo on CPU, a DistributedSampler shard per rank,
  batch size per process; only rank 0 writes files.
"""

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import models
from deeplense.device import resolve_device
from deeplense.errors import CheckpointError
from models.base import AnomalyModel
from training.datasets import ImageArrayDataset
from training.export import export_checkpoint
from training.plan import FitOptions, FitResult, Plan, prepare
from training.steps import Distributed, Precision, TrainStep, make_step

__all__ = ["FitOptions", "FitResult", "Plan", "fit", "prepare", "run", "STATE_DIR"]

log = logging.getLogger(__name__)

STATE_DIR = ".training_state"
STATE_FORMAT = 1


def training_device(spec: str, dist: Distributed) -> torch.device:
    """The device of this process: 'auto' = CUDA when present; each rank its own GPU."""
    device = resolve_device(spec)
    if device.type == "cuda":
        index = dist.local_rank if dist.enabled else (device.index or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


# --- training -----------------------------------------------------------------------------


def fit(options: FitOptions) -> list[FitResult]:
    """Plan, then train, calibrate and export every requested model (see module doc)."""
    return run(prepare(options))


def run(plan: Plan) -> list[FitResult]:
    """Train the planned models one after another in this process (a rank under torchrun)."""
    dist = Distributed.from_env()
    started_group = False
    if dist.enabled and not torch_dist.is_initialized():
        backend = "nccl" if _wants_cuda(plan.options.device) else "gloo"
        torch_dist.init_process_group(backend=backend)
        started_group = True
    try:
        device = training_device(plan.options.device, dist)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        return [_fit_one(plan, name, device, dist) for name in plan.names]
    finally:
        if started_group:
            torch_dist.destroy_process_group()


@contextlib.contextmanager
def service_matmul_precision() -> Iterator[None]:
    """float32 matrix products at the service's precision ("highest": no TF32) while the
    export calibrates: training may run them in TF32 on a GPU (`run`), but a threshold must
    come from the fits the service makes (LensFit 2's float32 bases, the networks' layers)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _wants_cuda(spec: str) -> bool:
    return spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())


def _fit_one(plan: Plan, name: str, device: torch.device, dist: Distributed) -> FitResult:
    options = plan.options
    precision = Precision.for_device(device, options.precision)
    torch.manual_seed(options.seed)  # identical initial weights on every rank
    model = models.create_model(name, **plan.arguments[name]).to(device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)  # conv weights NHWC

    train_loader, sampler = _train_loader(plan.train, options, device, dist)
    val_loader = _val_loader(plan.val, options, device, dist)
    steps_per_epoch = len(train_loader)
    step = make_step(
        model, options.lr, options.weight_decay, options.epochs * steps_per_epoch, precision, dist
    )
    identity = {
        "format": STATE_FORMAT,
        "architecture": name,
        "arguments": model.arguments(),
        "epochs": options.epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": options.batch_size,
        "world_size": dist.world_size,
        "n_train": len(plan.train),
        "seed": options.seed,
        "lr": options.lr,
        "weight_decay": options.weight_decay,
        "precision": precision.name,
        "channels_last": options.channels_last,
    }
    state_path = Path(options.out) / STATE_DIR / f"{name}.pt"
    history: list[dict[str, float]] = []
    start_epoch, wall_before = 0, 0.0
    if options.resume and state_path.is_file():
        start_epoch, history, wall_before = _load_state(state_path, identity, model, step, device)
        if dist.is_main:
            log.info("%s: resuming after epoch %d of %d", name, start_epoch, options.epochs)
    elif state_path.is_file() and dist.is_main:
        log.warning("%s: %s exists; starting afresh (pass --resume to continue)", name, state_path)

    log.info(  # every rank: says which device each one trains on
        "%s: %d train / %d val images, %dx%d, %d epochs of %d steps, batch %d x %d process(es), "
        "%s %s",
        name,
        len(plan.train),
        len(plan.val),
        model.image_size,
        model.image_size,
        options.epochs,
        steps_per_epoch,
        options.batch_size,
        dist.world_size,
        device,
        precision.name,
    )
    started = time.perf_counter()
    for epoch in range(start_epoch, options.epochs):
        t0 = time.perf_counter()
        _reseed(options.seed, epoch, dist.rank)
        sampler.set_epoch(epoch)
        train_means = _train_epoch(model, step, train_loader, device, dist, name, epoch, options)
        val_means = validate(model, val_loader, device, dist, precision)
        record = {
            "epoch": epoch + 1,
            **{f"train_{k}": v for k, v in train_means.items()},
            **{f"val_{k}": v for k, v in val_means.items()},
        }
        history.append(record)
        if dist.is_main:
            log.info(
                "%s epoch %d/%d: train %s | val %s (%.1f s)",
                name,
                epoch + 1,
                options.epochs,
                _fmt(train_means),
                _fmt(val_means),
                time.perf_counter() - t0,
            )
            elapsed = wall_before + time.perf_counter() - started
            _save_state(state_path, identity, epoch + 1, model, step, history, elapsed)
        _barrier(dist)
    wall_time = wall_before + time.perf_counter() - started

    checkpoint = None
    if dist.is_main:
        with service_matmul_precision():
            checkpoint = export_checkpoint(
                plan, name, model, device, history, wall_time, precision, dist,
                step.optimizer_settings(),
            )  # fmt: skip
        state_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            state_path.parent.rmdir()  # only when empty
    _barrier(dist)
    return FitResult(name=name, checkpoint=checkpoint, history=history)


def _train_loader(
    images: np.ndarray, options: FitOptions, device: torch.device, dist: Distributed
) -> tuple[DataLoader[Tensor], DistributedSampler[Tensor]]:
    dataset = ImageArrayDataset(images)
    sampler: DistributedSampler[Tensor] = DistributedSampler(
        dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=options.seed
    )
    per_rank = len(sampler)
    # Full batches only (a batch of 1 breaks BatchNorm), unless a shard is smaller than one.
    drop_last = per_rank >= options.batch_size
    return _loader(dataset, sampler, options, device, drop_last), sampler


def _val_loader(
    images: np.ndarray, options: FitOptions, device: torch.device, dist: Distributed
) -> DataLoader[Tensor]:
    # Each rank takes every world_size-th image: an exact split, no padding.
    indices = np.arange(dist.rank, len(images), dist.world_size)
    return _loader(ImageArrayDataset(images, indices), None, options, device, False)


def _loader(
    dataset: ImageArrayDataset,
    sampler: DistributedSampler[Tensor] | None,
    options: FitOptions,
    device: torch.device,
    drop_last: bool,
) -> DataLoader[Tensor]:
    workers = options.num_workers
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if device.type == "cuda" else 0
    return DataLoader(
        dataset,
        batch_size=options.batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )


def _reseed(seed: int, epoch: int, rank: int) -> None:
    """Seed the global RNGs (model sampling) from (seed, epoch, rank)."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0]
    torch.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def _train_epoch(
    model: AnomalyModel,
    step: TrainStep,
    loader: DataLoader[Tensor],
    device: torch.device,
    dist: Distributed,
    name: str,
    epoch: int,
    options: FitOptions,
) -> dict[str, float]:
    """One pass over this rank's shard; the batch-size-weighted mean of each loss part."""
    model.train()
    sums: dict[str, Tensor] = {}
    count = 0
    bar = tqdm(
        loader,
        desc=f"{name} {epoch + 1}/{options.epochs}",
        unit="batch",
        disable=None if dist.is_main else True,
        leave=False,
    )
    layout = torch.channels_last if options.channels_last else torch.contiguous_format
    for i, x in enumerate(bar):
        x = x.to(device, non_blocking=True, memory_format=layout)  # (B, 1, H, W)
        parts = step(x)
        for k, v in parts.items():
            sums[k] = sums.get(k, torch.zeros((), device=device)) + v.float() * len(x)
        count += len(x)
        if i % 10 == 0:  # .item() waits for the GPU: not on every batch
            bar.set_postfix(loss=f"{float(parts['loss']):.5g}")
    bar.close()
    return _mean_across_ranks(sums, count, device, dist)


@torch.no_grad()
def validate(
    model: AnomalyModel,
    loader: DataLoader[Tensor],
    device: torch.device,
    dist: Distributed,
    precision: Precision,
) -> dict[str, float]:
    """Mean of each `model.loss` part over the validation images, in eval mode."""
    model.eval()
    sums: dict[str, Tensor] = {}
    count = 0
    for x in loader:
        x = x.to(device, non_blocking=True)  # (B, 1, H, W)
        with precision.autocast():
            parts = model.loss(x)
        for k, v in parts.items():
            sums[k] = sums.get(k, torch.zeros((), device=device)) + v.detach().float() * len(x)
        count += len(x)
    return _mean_across_ranks(sums, count, device, dist)


def _mean_across_ranks(
    sums: dict[str, Tensor], count: int, device: torch.device, dist: Distributed
) -> dict[str, float]:
    keys = sorted(sums)
    packed = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), device=device)])
    if dist.enabled:
        torch_dist.all_reduce(packed)
    total = float(packed[-1])
    return {k: float(packed[i]) / max(total, 1.0) for i, k in enumerate(keys)}


def _barrier(dist: Distributed) -> None:
    if dist.enabled:
        torch_dist.barrier()


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.5g}" for k, v in values.items())


# --- training state (resume) -------------------------------------------------------------


def _save_state(
    path: Path,
    identity: dict[str, Any],
    epoch: int,
    model: AnomalyModel,
    step: TrainStep,
    history: list[dict[str, float]],
    wall_time_s: float,
) -> None:
    """Write the training state atomically (tensors and plain containers only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        **identity,
        "epoch": epoch,
        "model": model.state_dict(),
        "step": step.state_dict(),
        "history": history,
        "wall_time_s": wall_time_s,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_state(
    path: Path,
    identity: dict[str, Any],
    model: AnomalyModel,
    step: TrainStep,
    device: torch.device,
) -> tuple[int, list[dict[str, float]], float]:
    """Restore model and step from `path`; returns (epochs done, history, wall time so far)."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it, keep the cause short
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a training state")
    different = [
        f"{key} {state.get(key)!r} (now {value!r})"
        for key, value in identity.items()
        if state.get(key) != value
    ]
    if different:
        raise CheckpointError(
            f"{path}: made by a different run: {'; '.join(different)}; rerun with the same "
            "settings, or without --resume (or delete it) to start afresh"
        )
    try:
        model.load_state_dict(state["model"])
        step.load_state_dict(state["step"])
        return int(state["epoch"]), list(state["history"]), float(state["wall_time_s"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: training state does not fit this model ({exc})") from None
