"""Shared fixtures: tiny random-weight models and checkpoints for every registered model.

Tiny = 32x32 images and a few channels, so every test runs in well under a second on a CPU.
"""

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from deeplense.calibration import Calibration, calibration_from_scores
from deeplense.inference import score_array
from deeplense.scores import SCORES, scores_for
from models.base import TINY_IMAGE_SIZE, AnomalyModel
from models.card import CheckpointConfig, config_for
from models.checkpoint import save_checkpoint
from models.layers import ConvNetConfig
from models.registry import model_class

TINY_SIZE = TINY_IMAGE_SIZE

# The shared conv stack at test size, as constructor arguments (for the conv models' tests).
TINY_GEOMETRY = dataclasses.asdict(ConvNetConfig.tiny())


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per pytest-xdist worker and its subprocesses (OMP_NUM_THREADS, unless
    set): xdist already runs a worker per core, and two threads in each of two workers on the
    2-core machine ran the models' tests 4x slower (test_contract.py and test_lensfit2.py: 42 s
    against 162 s, 2026-12-06, beside two niced training jobs)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))


def tiny_arguments(name: str) -> dict[str, Any]:
    """A registered model's test-size constructor arguments: its config's `tiny()`."""
    return dataclasses.asdict(model_class(name).Config.tiny())


def tiny_model(name: str, seed: int = 0) -> AnomalyModel:
    """A registered model at test size with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return models.create_model(name, **tiny_arguments(name)).eval()


def tiny_images(n: int, seed: int = 0, size: int = TINY_SIZE) -> np.ndarray:
    """(n, 1, size, size) float32 ring-like images min-max scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    images = []
    for _ in range(n):
        ring = np.exp(-((r - size / 4 * rng.uniform(0.8, 1.2)) ** 2) / 4.0)
        img = ring + 0.05 * rng.standard_normal((size, size))
        img = (img - img.min()) / (img.max() - img.min())
        images.append(img[None].astype(np.float32))
    return np.stack(images)


def serving_model(score: str, pure: str = "vae") -> str:
    """A registered model that can be scored by `score`: `pure` for a score of (image,
    reconstruction, noise map), else the first model whose fit draws it."""
    if not SCORES[score].drawn_by_fit:
        return pure
    return next(n for n in models.list_models() if score in model_class(n).fit_scores)


def tiny_calibrations(model: AnomalyModel, fpr: float = 0.05) -> dict[str, Calibration]:
    """Every score's calibration of `model` on tiny normal images (quantiles, threshold)."""
    scored = score_array(model, tiny_images(64, seed=123), scores=scores_for(model))
    return {
        name: calibration_from_scores(values, fpr=fpr, dataset="tiny")
        for name, values in scored.scores.items()
    }


def tiny_config(model: AnomalyModel, default_score: str = "mse") -> CheckpointConfig:
    """A checkpoint config for `model`, calibrated for every score on tiny images."""
    return config_for(model, calibrations=tiny_calibrations(model), default_score=default_score)


@pytest.fixture(scope="session", params=models.list_models())
def model_name(request: pytest.FixtureRequest) -> str:
    """Each registered model name in turn."""
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint root with one calibrated tiny checkpoint per registered model."""
    root = tmp_path_factory.mktemp("checkpoints")
    for name in models.list_models():
        model = tiny_model(name)
        save_checkpoint(model, tiny_config(model), root / name)
    return root


@contextmanager
def threads_kept() -> Iterator[None]:
    """torch's thread count restored after code that sets its own (`set_num_threads`: a bench's
    main, a test that pins one thread)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
