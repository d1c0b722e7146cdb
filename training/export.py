"""Export a trained model: calibrate every score, check its reconstructions, write the
checkpoint folder with its model card (training facts, budget, warnings)."""

import logging
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplense.vocabulary import NORMAL, dataset_label, manifest_sha256
from models.base import AnomalyModel
from models.card import TrainingFacts, config_for
from models.checkpoint import save_checkpoint
from models.storage import check_weights_dtype, round_to_storage
from training.calibrate import calibrate_model, val_observations, with_substructure
from training.datasets import load_split
from training.health import reconstruction_health
from training.plan import Plan
from training.steps import Distributed, Precision

log = logging.getLogger(__name__)


def export_checkpoint(
    plan: Plan,
    name: str,
    model: AnomalyModel,
    device: torch.device,
    history: list[dict[str, float]],
    wall_time: float,
    precision: Precision,
    dist: Distributed,
    optimizer_settings: dict[str, Any],
) -> Path:
    """Calibrate every score on the validation split and write OUT/<name> (rank 0 only);
    `optimizer_settings` is the training step's account of its optimisation, for the card."""
    options = plan.options
    data = Path(options.data)
    dataset = dataset_label(data)
    # Weights rounded to their storage precision, then the model's own last step on training
    # images (LensFit learns its prior), before any calibration, so that the calibrated
    # scores are those of the exported model.
    weights_dtype = check_weights_dtype(options.weights_dtype)
    round_to_storage(model, weights_dtype)
    model.after_training(torch.from_numpy(np.array(plan.train[:1024], dtype=np.float32)).to(device))
    val = load_split(data, "val", image_size=model.image_size)  # no_sub (+ sphere, vort)
    val[NORMAL] = plan.val
    psf = plan.instrument.psf_sigma_pixels
    calibrated = calibrate_model(
        model, val, psf, fpr=options.fpr, dataset=dataset, device=device,
        batch_size=options.batch_size,
        observed=val_observations(data, val, model, plan.instrument),
    )  # fmt: skip
    calibrated = with_substructure(calibrated, data)
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
            "weights_dtype": weights_dtype,
            **optimizer_settings,  # the training step's own account (optimiser, rates)
            "history": history,
            "reconstruction_health": health.numbers,
            "model_card": model.card(),
        },
    )
    config = config_for(
        model,
        plan.instrument,
        calibrations=calibrated.calibrations,
        default_score=calibrated.default_score,
        default_score_reason=calibrated.reason,
        training=facts,
    )
    target = save_checkpoint(
        model, config, Path(options.out) / name, options.overwrite, weights_dtype
    )
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
