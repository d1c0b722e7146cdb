"""Teach a physics model's encoder the true lens parameters of a simulated training split.

LensFit 2's encoder, trained only on the goodness of fit at its guess, settles in a
degenerate basin: on Model R it guesses an Einstein radius near 0.3" for lenses of 1.2",
with the shapelet source drawing the ring itself, and Levenberg-Marquardt cannot climb out
(docs/results.md, "Where LensFit 2 loses the signal"). A simulated set knows each lens's
parameters (parameters.csv), so `supervise` fits the encoder to them by regression
(`model.parameter_loss`), then re-runs the model's after-training step (its prior, from
refits started at the new guesses), calibrates on DIR/val and writes a NEW checkpoint, as
`retune` does. The test split is never read.

Targets are `training.flexible_bound.truth_theta`: the flexible model's 13 parameters at
each image's true smooth lens (the shapelet scale as 0.7 of the source's half-light radius).
"""

import logging
import time
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from deeplense.errors import DatasetError
from deeplense.vocabulary import NORMAL, dataset_instrument, dataset_label, manifest_sha256
from models.card import TrainingFacts
from models.checkpoint import load_checkpoint
from models.storage import WeightsDtype
from training.calibrate import ScoreCalibrations
from training.datasets import load_split
from training.export import git_commit, training_budget
from training.flexible_bound import truth_theta
from training.retune import check_new_folder, relearn_and_save
from training.simulate import PARAMETERS_FILE, read_rows
from training.steps import Precision, ScheduledOptimizer

log = logging.getLogger(__name__)


class SupervisableModel(Protocol):
    """A model whose encoder can be fitted to known parameters (LensFit 2)."""

    def parameter_loss(
        self, x: Tensor, target: Tensor, pixel_scale: float | None = None
    ) -> dict[str, Tensor]: ...


def as_supervisable(model: torch.nn.Module) -> SupervisableModel:
    """`model`, if it has a parameter loss; ValueError naming its architecture otherwise."""
    if not hasattr(model, "parameter_loss"):
        name = getattr(model, "architecture", "") or type(model).__name__
        raise ValueError(f"{name} has no parameter loss: only lensfit2 can be supervised")
    return cast(SupervisableModel, model)


def training_targets(data: Path, count: int, split: str = "train") -> np.ndarray:
    """The true parameters (count, 13) float64 of DIR/split's first `count` no_sub images.
    DatasetError naming parameters.csv where it or a row is missing."""
    path = Path(data) / PARAMETERS_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: not found; supervise needs a simulated set's parameters")
    rows = read_rows(Path(data), split, count)
    missing = [i for i in range(count) if (NORMAL, i) not in rows]
    if missing:
        raise DatasetError(f"{path}: no {split} row for no_sub image {missing[0]}")
    return np.stack([truth_theta(rows[(NORMAL, i)]) for i in range(count)])


def fit_encoder(
    model: torch.nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    pixel_scale: float | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str = "cpu",
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict[str, float]]:
    """Adam with a one-cycle schedule on `model.parameter_loss` over images (N, 1, S, S) and
    targets (N, 13); each epoch's mean loss ("train"), and the loss on `held_out` (images,
    targets) after it ("val") where given."""
    supervised = as_supervisable(model)
    steps_per_epoch = -(-len(images) // batch_size)
    optimizer = ScheduledOptimizer(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-5,
        total_steps=epochs * steps_per_epoch, precision=Precision.for_device(torch.device(device)),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.tensor(np.asarray(images, dtype=np.float32))  # a copy: the split is read-only
    t_all = torch.tensor(targets)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()  # held_out_loss leaves it in eval mode
        start, total = time.perf_counter(), 0.0
        for index in torch.randperm(len(images), generator=generator).split(batch_size):
            x, target = x_all[index].to(device), t_all[index].to(device)
            loss = supervised.parameter_loss(x, target, pixel_scale)["loss"]
            optimizer.step(loss)
            total += float(loss.detach()) * len(index)
        history.append({"train": total / len(images)})
        if held_out is not None:
            history[-1]["val"] = held_out_loss(model, *held_out, pixel_scale, device)
        log.info(
            "supervise epoch %d/%d: parameter loss %s (%.1f s)", epoch, epochs,
            ", ".join(f"{k} {v:.5g}" for k, v in history[-1].items()), time.perf_counter() - start,
        )  # fmt: skip
    model.eval()
    return history


@torch.no_grad()
def held_out_loss(
    model: torch.nn.Module,
    images: np.ndarray,
    targets: np.ndarray,
    pixel_scale: float | None,
    device: torch.device | str,
    chunk: int = 64,
) -> float:
    """The mean parameter loss over images (N, 1, S, S) and targets (N, 13), in eval mode."""
    supervised = as_supervisable(model)
    model.eval()
    total = 0.0
    for i in range(0, len(images), chunk):
        x = torch.tensor(np.asarray(images[i : i + chunk], dtype=np.float32), device=device)
        t = torch.from_numpy(targets[i : i + chunk]).to(device)
        total += float(supervised.parameter_loss(x, t, pixel_scale)["loss"]) * len(x)
    return total / len(images)


def supervise(
    checkpoint: Path,
    data: Path,
    out: Path,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    fpr: float = 0.05,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    weights_dtype: WeightsDtype | None = None,
) -> tuple[Path, ScoreCalibrations, list[dict[str, float]]]:
    """Write OUT: CHECKPOINT's model with its encoder fitted to DATA/train's true parameters,
    its prior re-learnt, calibrated on DATA/val (module doc); and the loss of each epoch."""
    out = check_new_folder(checkpoint, out, overwrite)
    loaded = load_checkpoint(checkpoint, device=device)
    model = loaded.model
    as_supervisable(model)  # before reading the data
    train = load_split(data, "train", classes=[NORMAL])[NORMAL]  # (N, 1, S, S), own grid
    targets = training_targets(data, len(train))
    held_out = None
    val = load_split(data, "val").get(NORMAL) if (Path(data) / "val").is_dir() else None
    if val is not None and len(val):
        held_out = (val, training_targets(data, len(val), "val"))
    instrument = dataset_instrument(Path(data))
    pixel_scale = None if instrument is None else instrument.pixel_scale
    torch.manual_seed(seed)
    started = time.perf_counter()
    history = fit_encoder(
        model, train, targets, pixel_scale, epochs, batch_size,
        lr, seed, device, held_out,
    )  # fmt: skip
    wall_time = time.perf_counter() - started
    record: dict[str, Any] = {
        "from": str(checkpoint), "changes": {}, "data": str(data),
        "supervised": {
            "images": len(train), "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "seed": seed,
            "parameter_loss": [{k: round(v, 6) for k, v in h.items()} for h in history],
            "wall_time_s": round(wall_time, 1),
        },
        "previous_training": loaded.config.training.model_dump(exclude={"extra"}),
    }  # fmt: skip
    facts = supervised_facts(loaded.config.training, Path(data), len(train), epochs, batch_size,
                             seed, str(device), wall_time, history)  # fmt: skip
    written, calibrated = relearn_and_save(
        loaded, model, data, out, record, fpr=fpr, device=device, overwrite=overwrite,
        weights_dtype=weights_dtype, training=facts,
    )  # fmt: skip
    return written, calibrated, history


def supervised_facts(
    previous: TrainingFacts,
    data: Path,
    n_train: int,
    epochs: int,
    batch_size: int,
    seed: int,
    device: str,
    wall_time_s: float,
    history: list[dict[str, float]],
) -> TrainingFacts:
    """The card's training facts after supervision: the encoder was last fitted on DATA, so
    the card names DATA's dataset and manifest (the earlier facts go to the "retuned"
    history), with the parameter losses of the last epoch."""
    last = history[-1] if history else {}
    return previous.model_copy(
        update={
            "dataset": dataset_label(data),
            "dataset_manifest_sha256": manifest_sha256(data),
            "n_train": n_train, "epochs": epochs, "batch_size": batch_size, "seed": seed,
            "device": device, "wall_time_s": round(wall_time_s, 3),
            "final_losses": {f"{k}_parameter_loss": v for k, v in last.items()},
            "warnings": [], "git_commit": git_commit(), "torch_version": torch.__version__,
            "budget": "encoder supervised: " + training_budget(
                epochs, n_train, batch_size, device, wall_time_s
            ),
        }
    )  # fmt: skip
