"""Evaluation of checkpoints on a labelled test set, measured as REFERENCE.md defines it.

For every model and every registered score (`deeplense.scores`: the study's MSE, chi2,
chi2_psf): ROC-AUC of sub (sphere + vort) vs no_sub and of each substructure class vs no_sub
(scikit-learn's roc_auc_score / roc_curve, no_sub = 0, sub = 1), as `auc_<score>_<cmp>`;
`auc_<cmp>` repeats the checkpoint's default score's. Also W1 (per image, the 1-D
Wasserstein distance between the column sums of input and reconstruction,
`deeplense.metrics.column_w1`) averaged over the no_sub test images, the mean MSE per class
and its spread (std / mean across images), the false- and true-positive rates of the
default score's calibrated threshold on the test images (`deeplense.judge`, the rule the
service flags by), and the reconstruction health check of `training.health` (a collapsed
model is reported loudly).

Scores come from `deeplense.inference`, the functions the service and the `score` CLI use:
a simulated split (one stack per class) is scored as arrays (`score_array`), told the PSF its
manifest records: each image's own (Model R), or the dataset's one PSF where it is not the
checkpoint's (`training.observed_split.own_psf_split`), and never `--psf` or `--pixel-scale`
(the data's own record wins, as a FITS file's does); real data (class folders of per-image
files, FITS files with their noise maps, PSFs and pixel scales) and a split without a
recorded instrument given `--psf` or `--pixel-scale` are read and prepared file by file as
uploads are (`training.observed_split`, `score_observations`). So an evaluated score
equals the served score for the same image. Nothing here is tuned on the test split:
thresholds and default scores come from calibration.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from deeplense.calibration import judge
from deeplense.device import resolve_device
from deeplense.errors import CheckpointError, DatasetError
from deeplense.inference import score_array, score_observations
from deeplense.observation import Observation, RequestInstrument
from deeplense.scores import scores_for
from deeplense.vocabulary import CLASSES, NORMAL, dataset_instrument, dataset_name, manifest_sha256
from models.checkpoint import (
    LoadedCheckpoint,
    find_checkpoints,
    load_checkpoint,
    read_config,
)
from training.datasets import class_files, load_split
from training.default_record import record_default_choice
from training.health import reconstruction_health
from training.image_psfs import has_per_image_psf
from training.observed_split import observe_split, own_psf_split, read_as_uploads

log = logging.getLogger(__name__)
Labelled = TypeVar("Labelled")  # a class's images, or its files

# Comparisons reported for every model: name -> the anomalous classes it pools against no_sub.
COMPARISONS: dict[str, tuple[str, ...]] = {
    "sub": tuple(c for c in CLASSES if c != NORMAL),
    **{c: (c,) for c in CLASSES if c != NORMAL},
}


@dataclass
class Examples:
    """A few images of one class and a model's reconstructions of them: (k, H, W) each."""

    inputs: np.ndarray
    reconstructions: np.ndarray


@dataclass
class ModelEvaluation:
    """One model's metrics (flat floats, stored in config.json), ROC curves and examples."""

    name: str
    architecture: str
    checkpoint: Path
    image_size: int
    metrics: dict[str, float]
    roc: dict[str, tuple[np.ndarray, np.ndarray]]  # comparison -> (fpr, tpr), each (M,)
    examples: dict[str, Examples] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    default_score: str = "mse"
    warnings: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """Every model's evaluation on one labelled test set."""

    data_dir: Path
    dataset: str | None
    manifest_sha256: str | None
    n_images: dict[str, int]
    device: str
    models: dict[str, ModelEvaluation]
    psf: str = "the checkpoint's"  # which PSF the models were told (the report says)


def class_metrics(
    scores: dict[str, np.ndarray], threshold: float | None
) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """AUCs and ROC curves from one score's per-class values: class -> (N_c,).

    Keys: auc_<comparison>, and with a threshold: test_fpr (no_sub flagged) and
    test_tpr_<comparison> (flagged), flags by `deeplense.judge`.
    """
    from sklearn.metrics import roc_auc_score, roc_curve  # the train extra: imported on use

    if NORMAL not in scores or len(scores[NORMAL]) == 0:
        raise DatasetError(f"the test set has no {NORMAL} images; evaluation needs them")
    metrics: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    normal = scores[NORMAL]
    for comparison, classes in COMPARISONS.items():
        present = [c for c in classes if c in scores and len(scores[c])]
        if not present:
            continue
        anomalous = np.concatenate([scores[c] for c in present])
        y = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
        s = np.concatenate([normal, anomalous])
        metrics[f"auc_{comparison}"] = float(roc_auc_score(y, s))
        fpr, tpr, _ = roc_curve(y, s)
        curves[comparison] = (fpr, tpr)
        if threshold is not None:
            flags = judge(anomalous, None, threshold).is_anomaly
            metrics[f"test_tpr_{comparison}"] = float(np.mean(flags))
    if threshold is not None:
        metrics["threshold"] = float(threshold)
        metrics["test_fpr"] = float(np.mean(judge(normal, None, threshold).is_anomaly))
    return metrics, curves


def evaluate_model(
    loaded: LoadedCheckpoint,
    images: dict[str, np.ndarray],
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    n_examples: int = 3,
    observed: dict[str, list[Observation]] | None = None,
) -> ModelEvaluation:
    """Evaluate one loaded checkpoint on class -> (N, 1, H, W) test images at its input size;
    `observed` (the same images with their instrument, `training.observed_split`) are then
    what is scored, the images only shown and health-checked."""
    model = loaded.model
    config = loaded.config
    names = scores_for(model)
    per_score: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    w1: dict[str, np.ndarray] = {}
    examples: dict[str, Examples] = {}
    for cls, x in images.items():
        if observed is not None:
            scored = score_observations(
                model, observed[cls], device=device, batch_size=batch_size, scores=names
            )
        else:
            scored = score_array(
                model, x, device=device, batch_size=batch_size, scores=names,
                psf_sigma_pixels=config.input.psf_sigma_pixels,
            )  # fmt: skip
        for n in names:
            per_score[n][cls] = scored.scores[n]
        w1[cls] = scored.w1
        k = min(n_examples, len(x))
        if k:
            shown = score_array(model, x[:k], device=device, keep_reconstructions=True)
            assert shown.reconstruction is not None
            examples[cls] = Examples(
                inputs=x[:k, 0].copy(), reconstructions=shown.reconstruction[:, 0]
            )
    default = config.default_score
    calibration = config.calibration_for(default)
    metrics, curves = class_metrics(
        per_score[default], calibration.threshold if calibration else None
    )
    for n in names:
        aucs, _ = class_metrics(per_score[n], None)
        metrics.update({f"auc_{n}_{k[4:]}": v for k, v in aucs.items()})
    for cls in images:
        if len(images[cls]):
            mse = per_score["mse"][cls]
            metrics[f"mse_{cls}"] = float(np.mean(mse))
            # reconstruction quality's spread across images: std / mean (the study's: ~9%)
            metrics[f"mse_spread_{cls}"] = float(np.std(mse) / max(float(np.mean(mse)), 1e-30))
            metrics[f"w1_{cls}"] = float(np.mean(w1[cls]))
    if calibration is not None:
        metrics["calibration_fpr"] = calibration.fpr
    # The no_sub test images against their own mean image.
    health = reconstruction_health(model, images[NORMAL], images[NORMAL], device, batch_size)
    metrics.update(health.numbers)
    for warning in health.warnings:
        log.warning("%s: %s", loaded.name, warning)
    training = config.training.model_dump(exclude={"extra"}, exclude_none=True)
    return ModelEvaluation(
        name=loaded.name,
        architecture=config.architecture,
        checkpoint=loaded.path,
        image_size=model.image_size,
        metrics=metrics,
        roc=curves,
        examples=examples,
        training=training,
        default_score=default,
        warnings=health.warnings,
    )


def evaluate_checkpoints(
    checkpoints: Path,
    data_dir: Path,
    device: str = "auto",
    batch_size: int = 64,
    n_examples: int = 3,
    names: list[str] | None = None,
    dataset: str | None = None,
    request: RequestInstrument | None = None,
) -> Evaluation:
    """Evaluate every checkpoint under `checkpoints` (or only `names`) on DIR/test; a split
    of FITS files, or a `request` (the --psf and --pixel-scale flags), is read image by image
    with its instrument (`training.observed_split`)."""
    found = find_checkpoints(Path(checkpoints))
    if not found:
        raise CheckpointError(f"{checkpoints}: no checkpoint folders (with config.json) found")
    if names:
        missing = sorted(set(names) - set(found))
        if missing:
            raise CheckpointError(
                f"{checkpoints}: no checkpoint named {', '.join(missing)}; "
                f"found: {', '.join(found)}"
            )
        found = {n: p for n, p in found.items() if n in names}
    dev = resolve_device(device)
    loaded = {name: load_checkpoint(path, device=dev) for name, path in found.items()}
    # the plain test stack by image size: class -> (N, 1, S, S); images prepared for one
    # checkpoint's instrument are that checkpoint's alone
    plain: dict[int, dict[str, np.ndarray]] = {}
    first: dict[str, np.ndarray] | None = None
    files = class_files(Path(data_dir), "test")
    uploads = read_as_uploads(files)
    recorded = None if uploads else dataset_instrument(Path(data_dir))
    with_instrument = recorded is None and (request is not None or uploads)
    if recorded is not None and request is not None:  # the data's own record wins
        log.warning("%s: the dataset records its images' PSF and pixel scale (manifest.json); "
                    "--psf and --pixel-scale are not used", data_dir)  # fmt: skip
    told_own = False  # some checkpoint was told the dataset's own PSF
    results: dict[str, ModelEvaluation] = {}
    for name, ckpt in tqdm(loaded.items(), desc="evaluate", unit="model", disable=None):
        size = ckpt.model.image_size
        observed = None
        own = own_psf_split(
            Path(data_dir), "test", ckpt.model, ckpt.config.input.instrument()
        ) if recorded is not None else None  # fmt: skip
        if own is not None:
            told_own = True
            images, observed = _labelled(own.model_grid, Path(data_dir)), own.scored
        elif with_instrument:
            split = observe_split(
                _labelled(files, Path(data_dir)), ckpt, request or RequestInstrument()
            )
            images, observed = split.model_grid, split.scored
        else:
            if size not in plain:
                plain[size] = _labelled_split(Path(data_dir), size)
            images = plain[size]
        first = images if first is None else first
        log.info("evaluating %s on %s", name, ", ".join(f"{len(v)} {c}" for c, v in images.items()))
        results[name] = evaluate_model(ckpt, images, dev, batch_size, n_examples, observed)
    assert first is not None  # found holds at least one checkpoint
    sha = manifest_sha256(Path(data_dir))
    return Evaluation(
        data_dir=Path(data_dir),
        dataset=dataset or dataset_name(Path(data_dir)),
        manifest_sha256=sha,
        n_images={c: len(v) for c, v in first.items()},
        device=str(dev),
        models=results,
        psf=_psf_source(Path(data_dir) if told_own else None, with_instrument, request),
    )


def _psf_source(told: Path | None, with_instrument: bool, request: RequestInstrument | None) -> str:
    """The report's line on which PSF the models were told; `told`: the dataset whose
    recorded PSF they were told, if any."""
    if told is not None and has_per_image_psf(told):
        return "each image's own (parameters.csv), as an upload carrying it"
    recorded = dataset_instrument(told) if told is not None else None
    if recorded is not None:
        sigma = recorded.psf_sigma_arcsec
        return f"the dataset's (manifest.json: Gaussian sigma {sigma:g}\"), as uploads carrying it"
    if not with_instrument:  # a simulated stack drawn with the card's PSF, or no flags
        return "the checkpoint's"
    if request is not None and request.psf is not None:
        return "the --psf kernel, for every image without its own"
    return "each file's own where it carries one, else the checkpoint's"


def _labelled_split(data_dir: Path, size: int | None) -> dict[str, np.ndarray]:
    """DIR/test as class -> (N, 1, S, S) (None: the data's own size); DatasetError unless it
    holds no_sub and a sub class."""
    return _labelled(load_split(data_dir, "test", image_size=size), data_dir)


def _labelled(split: dict[str, Labelled], data_dir: Path) -> dict[str, Labelled]:
    """`split` (class -> its images or files), checked: no_sub and a sub class (DatasetError)."""
    if NORMAL not in split or not any(c in split for c in COMPARISONS["sub"]):
        raise DatasetError(
            f"{data_dir / 'test'}: evaluation needs {NORMAL} and at least one of "
            f"{', '.join(COMPARISONS['sub'])}; found {', '.join(split) or 'none'}"
        )
    return split


def store_metrics(evaluation: Evaluation, root: Path | None = None) -> None:
    """Write each model's metrics into its checkpoint's config.json (atomically), and the
    service's default choice (models.selection: the labelled validation split, never these
    test metrics) into training.extra of every card under `root` (the service serves them
    all), so evaluating one model of a set, or one new to it, records the set's choice in
    each of its cards alike; without `root`, into the evaluated cards
    (`training.default_record`)."""
    changed = {
        name: (
            read_config(r.checkpoint).model_copy(update={"metrics": dict(r.metrics)}),
            r.checkpoint,
        )
        for name, r in evaluation.models.items()
    }
    record_default_choice(root, changed)
