"""Calibrate a model on held-out images: one calibration per named score.

Each score's calibration is `deeplense.calibration.calibration_from_scores` of the normal
(no_sub) validation images; when DIR/val also holds sphere or vort images (as `simulate`
writes them), each score gets its validation ROC-AUC and Youden-J threshold there, and the
checkpoint's default score is `models.selection.choose_default_score` of them. The test
split is never used here. A dataset whose images each have their own PSF (Model R), or one
PSF that is not the checkpoint's, is scored as `evaluate` scores it: each image prepared
with the PSF the dataset records (`training.observed_split.own_psf_split`), so thresholds
and scores agree.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from deeplense.calibration import Calibration, calibration_from_scores
from deeplense.errors import DatasetError
from deeplense.inference import score_array, score_observations
from deeplense.instrument import Instrument
from deeplense.observation import Observation
from deeplense.scores import scores_for
from deeplense.vocabulary import LABELS, MANIFEST_FILE, NORMAL, read_manifest
from models.base import AnomalyModel
from models.checkpoint import LoadedCheckpoint
from models.selection import choose_default_score
from training.datasets import load_split
from training.observed_split import own_psf_split


@dataclass
class ScoreCalibrations:
    """Every score's calibration, the default score and why it was chosen."""

    calibrations: dict[str, Calibration]
    default_score: str
    reason: str


def calibrate_model(
    model: AnomalyModel,
    val: dict[str, np.ndarray],
    psf_sigma_pixels: float,
    fpr: float = 0.05,
    dataset: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    observed: dict[str, list[Observation]] | None = None,
) -> ScoreCalibrations:
    """Calibrate every score on validation images, class -> (N, 1, S, S): thresholds from
    no_sub, validation AUC and Youden-J from the other classes when present. `observed`:
    the same images prepared with their own instrument, then what is scored."""
    if NORMAL not in val or len(val[NORMAL]) < 2:
        raise DatasetError(f"calibration needs at least two {NORMAL} validation images")
    names = scores_for(model)
    scored = {
        cls: (
            score_observations(
                model, observed[cls], device=device, batch_size=batch_size, scores=names
            ) if observed is not None else score_array(
                model, x, device=device, batch_size=batch_size, scores=names,
                psf_sigma_pixels=psf_sigma_pixels,
            )
        ).scores
        for cls, x in val.items()
        if len(x)
    }  # fmt: skip
    for cls, values in scored.items():
        for name, v in values.items():
            if not np.isfinite(v).all():
                raise DatasetError(
                    f"{model.architecture}: non-finite {name} scores on the {cls} validation "
                    "images; training diverged"
                )
    anomalous = [c for c in scored if c != NORMAL]
    calibrations = {}
    for name in names:
        normal = scored[NORMAL][name]
        labelled = labels = None
        if anomalous:
            labelled = np.concatenate([normal, *(scored[c][name] for c in anomalous)])
            labels = np.concatenate(
                [
                    np.zeros(len(normal)),
                    *(np.full(len(scored[c][name]), LABELS[c]) for c in anomalous),
                ]
            )
        calibrations[name] = calibration_from_scores(normal, fpr, dataset, labelled, labels)
    default, reason = choose_default_score(calibrations)
    return ScoreCalibrations(calibrations=calibrations, default_score=default, reason=reason)


def calibrate_checkpoint(
    loaded: LoadedCheckpoint,
    data_dir: Path,
    fpr: float = 0.05,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    dataset: str | None = None,
) -> ScoreCalibrations:
    """Calibrate a loaded checkpoint on DIR/val (no_sub, and sphere / vort when present)."""
    data_dir = Path(data_dir)
    val = load_split(data_dir, "val", image_size=loaded.model.image_size)
    if NORMAL not in val or len(val[NORMAL]) < 2:
        raise DatasetError(f"{data_dir / 'val'}: calibration needs at least two no_sub images")
    card = loaded.config.input.instrument()
    calibrated = calibrate_model(
        loaded.model,
        val,
        loaded.config.input.psf_sigma_pixels,
        fpr=fpr,
        dataset=dataset,
        device=device,
        batch_size=batch_size,
        observed=val_observations(data_dir, val, loaded.model, card),
    )
    return with_substructure(calibrated, data_dir)


def with_substructure(calibrated: ScoreCalibrations, data_dir: Path) -> ScoreCalibrations:
    """`calibrated`, its reason naming the labelled split's substructure from DIR's manifest
    (the default score depends on how strong a signal it was chosen on); unchanged for a
    set without a manifest or without labelled validation images."""
    labelled = any(c.validation_auc is not None for c in calibrated.calibrations.values())
    if not labelled or not (Path(data_dir) / MANIFEST_FILE).is_file():
        return calibrated
    try:
        manifest = read_manifest(Path(data_dir))
    except DatasetError:  # not the simulator's manifest: nothing to say
        return calibrated
    kind, fraction = manifest.get("substructure"), manifest.get("subhalo_mass_fraction")
    if kind == "study":
        note = "the study's subhalo draws"
    elif isinstance(fraction, int | float):
        note = f"subhalos holding {100 * fraction:g}% of the lens mass"
    else:
        return calibrated
    reason = f"{calibrated.reason}; validation substructure: {note}"
    return replace(calibrated, reason=reason)


def val_observations(
    data_dir: Path, val: dict[str, np.ndarray], model: AnomalyModel, card: Instrument
) -> dict[str, list[Observation]] | None:
    """`val`'s images (the first len(val[class]) of DIR/val) prepared with each one's own
    PSF when the dataset records one per image, or with the dataset's PSF where it is not
    `card`'s; None otherwise."""
    counts = {cls: len(x) for cls, x in val.items() if len(x)}
    split = own_psf_split(Path(data_dir), "val", model, card, counts)
    return None if split is None else split.scored
