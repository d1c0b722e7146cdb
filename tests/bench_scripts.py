"""Load a bench/ script as a module (bench/ is scripts, not a package), for its tests."""

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from tests.conftest import tiny_images

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py, executed as module NAME."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_split(root: Path, classes: tuple[str, ...] = ("no_sub", "vort"), n: int = 3) -> Path:
    """root/val holding n tiny images (n, H, W) float32 per class file, class k seeded k."""
    split = root / "val"
    split.mkdir(parents=True)
    for seed, cls in enumerate(classes):
        np.save(split / f"{cls}.npy", tiny_images(n, seed=seed)[:, 0])
    return split
