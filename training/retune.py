"""Change a trained model's inference settings without retraining it.

Some config arguments do not touch the weights' shapes: LensFit's refinement (`refine_steps`,
`refine_method`) and how it learns its prior (`prior_deconvolve`, `prior_fit_steps`, ...).
`retune` loads a checkpoint, applies new values of such arguments, runs the model's own
after-training step on DIR/train (LensFit re-learns its prior; `keep_prior` skips it, for a
change such as a refinement schedule that should keep the prior the model was shipped
with), calibrates every score on DIR/val (the labelled split when it has one; never the
test split) and writes a NEW checkpoint folder. The old test metrics are dropped, since they
no longer describe the model: run `evaluate --update-checkpoints` on the new folder. The
card records what changed.

It also converts a checkpoint's storage (`weights_dtype` "float16": half the size): the
weights are rounded in memory first, so the new calibration is that of the stored weights.
"""

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from deeplense.errors import CheckpointError, DatasetError
from deeplense.vocabulary import NORMAL, dataset_label
from models.card import TrainingFacts
from models.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from models.registry import create_model
from models.storage import WEIGHTS_DTYPES, WeightsDtype, round_to_storage
from training.calibrate import ScoreCalibrations, calibrate_checkpoint
from training.datasets import load_split
from training.plan import config_fields

log = logging.getLogger(__name__)
AFTER_TRAINING_IMAGES = 1024  # as export: the first N training images


def retuned_model(loaded: LoadedCheckpoint, changes: dict[str, Any]) -> torch.nn.Module:
    """The checkpoint's model rebuilt with `changes` to its arguments, same weights.
    ValueError for an argument the architecture does not have or refuses;
    CheckpointError when the change would need other weights."""
    architecture = loaded.config.architecture
    unknown = sorted(set(changes) - config_fields(architecture))
    if unknown:
        valid = ", ".join(sorted(config_fields(architecture)))
        raise ValueError(f"{architecture} has no argument {', '.join(unknown)}; valid: {valid}")
    model = create_model(architecture, **{**loaded.config.arguments, **changes})
    try:
        model.load_state_dict(loaded.model.state_dict(), strict=True)
    except RuntimeError:
        raise CheckpointError(
            f"{', '.join(sorted(changes))}: changes the weights' shapes; retrain instead"
        ) from None
    return model


def check_new_folder(checkpoint: Path, out: Path, overwrite: bool) -> Path:
    """OUT, unless it exists (and not `overwrite`) or is CHECKPOINT itself: CheckpointError."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} exists; pass --overwrite to replace it")
    if out.resolve() == Path(checkpoint).resolve():
        raise CheckpointError(f"{out}: write the retuned model to a new folder, not over itself")
    return out


def retune(
    checkpoint: Path,
    data: Path,
    out: Path,
    changes: dict[str, Any],
    fpr: float = 0.05,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    overwrite: bool = False,
    weights_dtype: WeightsDtype | None = None,
    keep_prior: bool = False,
) -> tuple[Path, ScoreCalibrations]:
    """Write OUT: CHECKPOINT's model with `changes`, stored in `weights_dtype` (None: as
    before), its after-training step re-run on DATA/train (`keep_prior`: not re-run, the
    learnt state kept as it is), calibrated on DATA/val. Refuses an existing OUT unless
    `overwrite`."""
    out = check_new_folder(checkpoint, out, overwrite)
    loaded = load_checkpoint(checkpoint, device=device)
    model = retuned_model(loaded, changes).to(device)
    record: dict[str, Any] = {"from": str(checkpoint), "changes": changes, "data": str(data)}
    if keep_prior:
        record["after_training"] = "not re-run: the prior kept"
    return relearn_and_save(
        loaded, model, data, out, record, fpr=fpr, device=device, batch_size=batch_size,
        overwrite=overwrite, weights_dtype=weights_dtype, relearn=not keep_prior,
    )  # fmt: skip


def relearn_after_training(model: torch.nn.Module, data: Path, device: torch.device | str) -> None:
    """Re-run `model`'s after-training step (LensFit's prior) on DATA/train's first
    AFTER_TRAINING_IMAGES normal lenses; DatasetError without 2 of them."""
    train = load_split(data, "train", image_size=model.image_size, classes=[NORMAL]).get(NORMAL)
    if train is None or len(train) < 2:
        raise DatasetError(f"{Path(data) / 'train'}: need at least 2 no_sub images")
    images = np.array(train[:AFTER_TRAINING_IMAGES], dtype=np.float32)  # (N, 1, S, S)
    model.after_training(torch.from_numpy(images).to(device))


def relearn_and_save(
    loaded: LoadedCheckpoint,
    model: torch.nn.Module,
    data: Path,
    out: Path,
    record: dict[str, Any],
    fpr: float = 0.05,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    overwrite: bool = False,
    weights_dtype: WeightsDtype | None = None,
    training: TrainingFacts | None = None,
    relearn: bool = True,
) -> tuple[Path, ScoreCalibrations]:
    """The shared tail of `retune` and `training.supervise`: `model` (`loaded`'s, changed)
    stored in `weights_dtype` (None: as `loaded`), its after-training step re-run on
    DATA/train (unless not `relearn`), calibrated on DATA/val, written to OUT with `record`
    appended to the card's "retuned" history and the old test metrics dropped. `training`:
    the card's new training facts (None: `loaded`'s); each calibration names DATA's dataset,
    where it was made."""
    stored = loaded.config.training.extra.get("weights_dtype", "float32")
    if weights_dtype is None:
        weights_dtype = cast(WeightsDtype, stored if stored in WEIGHTS_DTYPES else "float32")
    round_to_storage(model, weights_dtype)  # calibrate the weights that are stored
    if relearn:
        relearn_after_training(model, data, device)
    model.eval()
    rebuilt = LoadedCheckpoint(model=model, config=loaded.config, path=loaded.path)
    calibrated = calibrate_checkpoint(
        rebuilt, data, fpr=fpr, device=device, batch_size=batch_size,
        dataset=dataset_label(Path(data)),
    )  # fmt: skip
    training = training or loaded.config.training
    history = list(training.extra.get("retuned", []))
    history.append({**record, "weights_dtype": weights_dtype})
    extra = {
        **training.extra, "retuned": history, "model_card": model.card(),
        "weights_dtype": weights_dtype,
    }  # fmt: skip
    config = loaded.config.model_copy(
        update={
            "arguments": model.arguments(),
            "calibrations": calibrated.calibrations,
            "default_score": calibrated.default_score,
            "default_score_reason": calibrated.reason,
            "metrics": {},  # measured on the old settings: evaluate again
            "training": training.model_copy(update={"extra": extra}),
        }
    )
    save_checkpoint(model, config, out, overwrite=overwrite, weights_dtype=weights_dtype)
    return out, calibrated
