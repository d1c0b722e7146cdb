"""How separable are the classes at all? ROC-AUC of ideal scores on a simulated test set.

An anomaly model can at best reconstruct the smooth lens (no subhalos) exactly. This script
re-renders that noiseless macro model for each test image from the dataset's stored
parameters and scores the image with

- `oracle_mse`: the mean squared residual against the ideal reconstruction (the best any
  reconstruction-MSE model can do), and
- `oracle_filtered`: the same residual smoothed by the PSF first (a matched filter that
  suppresses pixel noise, a bound for a noise-aware score),

then prints the AUC of sub vs no_sub, sphere vs no_sub and vort vs no_sub.

    .venv/bin/python bench/oracle_auc.py data/model_a [--n 300]
"""

import argparse
import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from sklearn.metrics import roc_auc_score

from training.lensing.render import LensParams, render_components
from training.simulate import PARAMETERS_FILE, SimConfig, read_manifest


def load_params(directory: Path, n: int) -> dict[tuple[str, int], LensParams]:
    """Parameters of the first n test images of each class (subhalos dropped: macro model)."""
    fields = {f.name for f in dataclasses.fields(LensParams)} - {"subhalos"}
    out = {}
    with (directory / PARAMETERS_FILE).open(newline="") as f:
        for row in csv.DictReader(f):
            index = int(row["index"])
            if row["split"] == "test" and index < n:
                values = {k: float(v) for k, v in row.items() if k in fields}
                out[(row["class"], index)] = LensParams(**values)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a simulated dataset folder")
    parser.add_argument("--n", type=int, default=300, help="test images per class")
    args = parser.parse_args()
    manifest = read_manifest(args.data)
    config = SimConfig(**manifest["config"])
    psf_sigma_pixels = config.psf_sigma / config.pixel_scale
    params = load_params(args.data, args.n)
    scores: dict[str, dict[str, list[float]]] = {"oracle_mse": {}, "oracle_filtered": {}}
    for cls in ("no_sub", "sphere", "vort"):
        images = np.load(args.data / "test" / f"{cls}.npy", mmap_mode="r", allow_pickle=False)
        for name in scores:
            scores[name][cls] = []
        for i in range(min(args.n, len(images))):
            x = np.asarray(images[i, 0], dtype=np.float64)  # (H, W) in [0, 1]
            clean = render_components(params[(cls, i)], config).rate  # (H, W) counts/s
            design = np.stack([clean.ravel(), np.ones(clean.size)], axis=1)
            coef, *_ = np.linalg.lstsq(design, x.ravel(), rcond=None)
            residual = x - (design @ coef).reshape(x.shape)  # noise (+ substructure)
            scores["oracle_mse"][cls].append(float(np.mean(residual**2)))
            smoothed = gaussian_filter(residual, psf_sigma_pixels)
            scores["oracle_filtered"][cls].append(float(np.mean(smoothed**2)))
    print(f"dataset {manifest.get('dataset')}, {args.n} test images per class\n")
    print("| score | AUC sub | AUC sphere | AUC vort |")
    print("| --- | --- | --- | --- |")
    for name, by_class in scores.items():
        normal = np.array(by_class["no_sub"])
        row = []
        for subs in (("sphere", "vort"), ("sphere",), ("vort",)):
            anomalous = np.concatenate([by_class[c] for c in subs])
            y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
            row.append(roc_auc_score(y, np.r_[normal, anomalous]))
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
