"""Training: fit registered models on a dataset's no_sub images, calibrate, export checkpoints.

`fit(options)` trains each requested model with Adam + a one-cycle schedule (the AAE with its
own three-optimiser step, `training.aae_step`), logs a validation loss per epoch on DIR/val,
calibrates the anomaly threshold on the val no_sub scores and writes `OUT/<model>/`.

- CUDA when present: mixed precision (bf16 autocast, or fp16 with a gradient scaler where the
  GPU lacks bf16), pinned memory, non-blocking copies. CPU otherwise, in float32.
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
import dataclasses
import logging
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import models
from deeplense.device import resolve_device
from deeplense.errors import CheckpointError, DatasetError, OutputExistsError
from deeplense.scoring import score_array
from models.base import AnomalyModel
from models.checkpoint import TrainingFacts, config_for, save_checkpoint
from models.registry import model_class
from training.calibrate import calibrate_model
from training.datasets import ImageArrayDataset, load_split, manifest_sha256
from training.evaluate import dataset_name
from training.health import reconstruction_health

log = logging.getLogger(__name__)

STATE_DIR = ".training_state"
STATE_FORMAT = 1
NORMAL = "no_sub"


@dataclass
class FitOptions:
    """Everything `python -m training fit` takes (defaults: REFERENCE.md's training setup)."""

    data: Path
    out: Path
    model: str = "all"  # a registered name or "all"
    epochs: int = 50
    batch_size: int = 100  # per process
    device: str = "auto"  # auto, cuda or cpu
    seed: int = 0
    lr: float = 2e-3  # peak of the one-cycle schedule (the AAE uses its config's rates)
    weight_decay: float = 1e-5
    fpr: float = 0.05  # calibration: target false-positive rate on val no_sub
    resume: bool = False
    overwrite: bool = False
    num_workers: int | None = None  # None: 0 on CPU, up to 4 per process on CUDA
    max_train: int | None = None  # use only the first N training images
    arch_args: dict[str, Any] = field(default_factory=dict)  # model config overrides


@dataclass
class FitResult:
    """One trained model: its checkpoint folder (None on ranks other than 0) and history."""

    name: str
    checkpoint: Path | None
    history: list[dict[str, float]]


# --- building blocks shared with the AAE step and the benchmark -----------------------------


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (world_size 1 = plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """Read RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
        return cls(rank=rank, world_size=world, local_rank=local)


@dataclass(frozen=True)
class Precision:
    """Autocast dtype on the training device: None = plain float32."""

    device_type: str
    dtype: torch.dtype | None = None

    @classmethod
    def for_device(cls, device: torch.device) -> "Precision":
        """bf16 on CUDA GPUs that support it, else fp16 (with a scaler); float32 on CPU."""
        if device.type != "cuda":
            return cls(device.type)
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls("cuda", dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active only for fp16 (bf16 has float32's range)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


class ScheduledOptimizer:
    """Adam with weight decay, a one-cycle schedule peaking at `lr`, and a loss scaler."""

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float,
        weight_decay: float,
        total_steps: int,
        precision: Precision,
    ) -> None:
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=lr, total_steps=total_steps
        )
        self.scaler = precision.grad_scaler()

    def step(self, loss: Tensor) -> None:
        """Zero this optimiser's gradients, backpropagate `loss`, update, advance the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


class TrainStep(Protocol):
    """One optimisation step on a batch; returns the detached loss parts ("loss" first)."""

    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class LossForward(nn.Module):
    """`forward(x)` = `model.loss(x)`: the module DDP wraps, since DDP hooks only forward()."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model.loss(x)


def wrap_for_training(
    module: nn.Module, dist: Distributed, find_unused_parameters: bool = False
) -> nn.Module:
    """`module` itself in a single process; DistributedDataParallel around it under torchrun."""
    if not dist.enabled:
        return module
    device = next(module.parameters()).device
    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


class StandardStep:
    """The step of every model but the AAE: minimise `model.loss(x)["loss"]`."""

    def __init__(
        self,
        model: AnomalyModel,
        lr: float,
        weight_decay: float,
        total_steps: int,
        precision: Precision,
        dist: Distributed,
    ) -> None:
        self.precision = precision
        self.net = wrap_for_training(LossForward(model), dist)
        self.optimizer = ScheduledOptimizer(
            list(model.parameters()), lr, weight_decay, total_steps, precision
        )

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        with self.precision.autocast():
            parts = self.net(x)
        self.optimizer.step(parts["loss"])
        return {k: v.detach() for k, v in parts.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"main": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["main"])


def make_step(
    model: AnomalyModel,
    lr: float,
    weight_decay: float,
    total_steps: int,
    precision: Precision,
    dist: Distributed | None = None,
) -> TrainStep:
    """The training step for `model` (on its device already): the AAE's own, else standard."""
    from models.aae import AdversarialAutoencoder
    from training.aae_step import AdversarialStep  # imports this module: import it late

    dist = dist or Distributed()
    if isinstance(model, AdversarialAutoencoder):
        return AdversarialStep(model, weight_decay, total_steps, precision, dist)
    return StandardStep(model, lr, weight_decay, total_steps, precision, dist)


def training_device(spec: str, dist: Distributed) -> torch.device:
    """The device of this process: 'auto' = CUDA when present; each rank its own GPU."""
    device = resolve_device(spec)
    if device.type == "cuda":
        index = dist.local_rank if dist.enabled else (device.index or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    return device


# --- planning: everything that can be refused is refused before training -------------------


def model_names(spec: str) -> list[str]:
    """'all' -> every registered model; otherwise the one name (UnknownModelError if unknown)."""
    if spec == "all":
        return models.list_models()
    model_class(spec)
    return [spec]


def config_fields(name: str) -> set[str]:
    """Names of the config arguments of a registered model."""
    return {f.name for f in dataclasses.fields(model_class(name).Config)}


def arguments_for(name: str, arch_args: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The constructor arguments of `name`: the arch args it accepts, image_size from data."""
    accepted = config_fields(name)
    chosen = {k: v for k, v in arch_args.items() if k in accepted}
    chosen["image_size"] = image_size
    return chosen


def check_arch_args(names: list[str], arch_args: dict[str, Any]) -> None:
    """Refuse arch args no registered model knows (ValueError); log those `names` ignore."""
    known = set().union(*(config_fields(n) for n in models.list_models()))
    unknown = sorted(set(arch_args) - known)
    if unknown:
        raise ValueError(
            f"unknown arch args {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    used = set().union(*(config_fields(n) for n in names))
    ignored = sorted(set(arch_args) - used)
    if ignored:
        log.info("arch args %s do not apply to %s: ignored", ", ".join(ignored), ", ".join(names))
    size = arch_args.get("image_size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ValueError(f"image_size must be a positive integer, got {size!r}")


@dataclass
class Plan:
    """Validated inputs of a run: model names, their arguments, data, outputs."""

    options: FitOptions
    names: list[str]
    arguments: dict[str, dict[str, Any]]
    train: np.ndarray  # (N, 1, S, S) float32 no_sub training images
    val: np.ndarray  # (M, 1, S, S) float32 no_sub validation images


def prepare(options: FitOptions) -> Plan:
    """Check names, arch args, outputs and data, and build each model's config once.

    Raises UnknownModelError, OutputExistsError, DatasetError, or ValueError for arch
    arguments a model refuses.
    """
    names = model_names(options.model)
    check_arch_args(names, options.arch_args)
    for name in names:
        target = Path(options.out) / name
        if target.exists() and not options.overwrite:
            raise OutputExistsError(f"{target} exists; pass --overwrite to replace it")
    size = options.arch_args.get("image_size")
    train = load_split(options.data, "train", image_size=size, classes=[NORMAL])[NORMAL]
    if options.max_train is not None:
        train = train[: options.max_train]
    side = int(train.shape[-1])
    val = load_split(options.data, "val", image_size=side, classes=[NORMAL])[NORMAL]
    if len(train) < 2:
        raise DatasetError(f"{Path(options.data) / 'train'}: need at least 2 no_sub images")
    if len(val) < 2:
        raise DatasetError(f"{Path(options.data) / 'val'}: need at least 2 no_sub images")
    arguments = {n: arguments_for(n, options.arch_args, side) for n in names}
    for name, args in arguments.items():
        with torch.device("meta"):  # build each model without memory: bad values raise here
            models.create_model(name, **args)
    return Plan(options=options, names=names, arguments=arguments, train=train, val=val)


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


def _wants_cuda(spec: str) -> bool:
    return spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())


def _fit_one(plan: Plan, name: str, device: torch.device, dist: Distributed) -> FitResult:
    options = plan.options
    precision = Precision.for_device(device)
    torch.manual_seed(options.seed)  # identical initial weights on every rank
    model = models.create_model(name, **plan.arguments[name]).to(device)
    if name == "aae" and dist.is_main:
        cfg = model.config
        log.info(
            "aae: its own learning rates (autoencoder %g, discriminator %g, generator %g), "
            "not --lr",
            cfg.lr_autoencoder,
            cfg.lr_discriminator,
            cfg.lr_generator,
        )

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
        checkpoint = _export(plan, name, model, device, history, wall_time, precision, dist)
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
    for i, x in enumerate(bar):
        x = x.to(device, non_blocking=True)  # (B, 1, H, W)
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


# --- export -------------------------------------------------------------------------------


def _export(
    plan: Plan,
    name: str,
    model: AnomalyModel,
    device: torch.device,
    history: list[dict[str, float]],
    wall_time: float,
    precision: Precision,
    dist: Distributed,
) -> Path:
    """Calibrate every score on the validation split and write OUT/<name> (rank 0 only)."""
    options = plan.options
    data = Path(options.data)
    dataset = dataset_name(data) or data.resolve().name
    scores = score_array(model, plan.val, device=device, batch_size=options.batch_size).loss
    if not np.isfinite(scores).all():
        raise DatasetError(f"{name}: non-finite validation scores; training diverged")
    val = load_split(data, "val", image_size=model.image_size)  # no_sub (+ sphere, vort)
    val[NORMAL] = plan.val
    psf = config_for(model).input.psf_sigma_pixels
    calibrated = calibrate_model(
        model, val, psf, fpr=options.fpr, dataset=dataset, device=device,
        batch_size=options.batch_size,
    )  # fmt: skip
    health = reconstruction_health(model, plan.val, plan.train, device, options.batch_size)
    for warning in health.warnings:
        log.warning("%s: %s", name, warning)
    last = history[-1] if history else {}
    facts = TrainingFacts(
        dataset=dataset,
        dataset_manifest_sha256=manifest_sha256(data),
        n_train=len(plan.train),
        epochs=options.epochs,
        batch_size=options.batch_size,
        seed=options.seed,
        device=_device_name(device, dist),
        wall_time_s=round(wall_time, 3),
        final_losses={k: v for k, v in last.items() if k != "epoch" and math.isfinite(v)},
        warnings=health.warnings,
        git_commit=git_commit(),
        torch_version=torch.__version__,
        budget=training_budget(
            options.epochs,
            len(plan.train),
            options.batch_size,
            _device_name(device, dist),
            wall_time,
        ),
        extra={
            "world_size": dist.world_size,
            "global_batch_size": options.batch_size * dist.world_size,
            "precision": precision.name,
            "optimizer": "Adam + OneCycleLR",
            "lr": options.lr if name != "aae" else None,
            "weight_decay": options.weight_decay,
            "history": history,
            "reconstruction_health": health.numbers,
        },
    )
    config = config_for(
        model,
        calibrations=calibrated.calibrations,
        default_score=calibrated.default_score,
        default_score_reason=calibrated.reason,
        training=facts,
    )
    target = save_checkpoint(model, config, Path(options.out) / name, overwrite=options.overwrite)
    default = calibrated.calibrations[calibrated.default_score]
    log.info(
        "%s: wrote %s (default score %s: threshold %.6g at FPR %g on %d val images; %s)",
        name,
        target,
        calibrated.default_score,
        default.threshold,
        default.fpr,
        default.n_images,
        calibrated.reason,
    )
    return target


def training_budget(
    epochs: int, n_train: int, batch_size: int, device: str, wall_time_s: float
) -> str:
    """The training budget in words, for the model card."""
    where = device
    if device.startswith("cpu"):
        where = f"{device} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return (
        f"{epochs} epochs over {n_train} images (batch {batch_size}) on {where}, "
        f"{wall_time_s / 60:.1f} min of training"
    )


def _device_name(device: torch.device, dist: Distributed) -> str:
    text = device.type
    if device.type == "cuda":
        text = f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{text} x{dist.world_size}" if dist.enabled else text


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the source tree, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit or None
