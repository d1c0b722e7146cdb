"""Does the best blob that LensFit 2's tests report sit where the subhalos are?

The service returns, with imaging_gain, the position of the best single blob of mass
(`gravitational_imaging`). This scores the first N substructure images of each class of a
simulated split by imaging_gain (one image at a time, as the service does) and compares that
position with the simulated subhalos (`subhalos.csv`: each image's subhalos, or the points
along its vortex), arcsec:

- `best`: the distance from the best blob to the nearest subhalo;
- `chance`: the same distance for a blob placed on the tests' grid at random (the mean over
  the grid's points about the image's centre), what a position that knew nothing would get.

It prints, per class, the medians and the share within `--near` arcsec, over all the images
and over those the checkpoint's calibrated threshold flags.

    .venv/bin/python bench/blob_localisation.py checkpoints/model_a/lensfit2 \
        data/model_a_r2 --split val --n 100
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplense.inference import score_array  # noqa: E402
from deeplense.lensing.perturbation import PerturbationConfig, disc_centres  # noqa: E402
from deeplense.vocabulary import SUBSTRUCTURE_CLASSES  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402


def subhalo_positions(data: Path, split: str, cls: str, n: int) -> list[np.ndarray]:
    """Each of the first n images' subhalo positions (k, 2) arcsec, from subhalos.csv."""
    table = data / "subhalos.csv"
    if not table.exists():
        raise SystemExit(f"error: {table} not found (a simulated dataset folder is needed)")
    found: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    with table.open() as fh:
        for row in csv.DictReader(fh):
            if row["split"] == split and row["class"] == cls and int(row["index"]) < n:
                found[int(row["index"])].append((float(row["x"]), float(row["y"])))
    return [np.array(p, dtype=np.float64).reshape(-1, 2) for p in found]


def nearest(points: np.ndarray, subhalos: np.ndarray) -> np.ndarray:
    """Distance (P,) from each point (P, 2) to the nearest subhalo (k, 2); inf for none."""
    if len(subhalos) == 0:
        return np.full(len(points), np.inf)
    gaps = points[:, None, :] - subhalos[None, :, :]
    return np.sqrt((gaps**2).sum(axis=2)).min(axis=1)


def localise(
    checkpoint: Path, data: Path, split: str, n: int, near: float
) -> dict[str, dict[str, np.ndarray]]:
    """Per class, each (n,): 'best' (the best blob's distance, arcsec), 'chance' (a random
    grid point's, its mean), 'best_near' and 'chance_near' (within `near` arcsec: 0/1, and
    the grid points' share), 'flagged' (bool)."""
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.eval()
    calibration = loaded.config.calibrations.get("imaging_gain")
    psf = loaded.config.input.psf_sigma_pixels
    grid = disc_centres(torch.zeros(13, dtype=torch.float64), PerturbationConfig()).numpy()
    out: dict[str, dict[str, np.ndarray]] = {}
    for cls in SUBSTRUCTURE_CLASSES:
        path = data / split / f"{cls}.npy"
        if not path.exists():
            continue
        images = np.load(path, mmap_mode="r", allow_pickle=False)[:n].astype(np.float32)
        images = images[:, None] if images.ndim == 3 else images
        subhalos = subhalo_positions(data, split, cls, len(images))
        scored = score_array(
            model, images, scores=["imaging_gain"], batch_size=1, psf_sigma_pixels=psf
        )
        x, y = scored.findings["blob_x_arcsec"], scored.findings["blob_y_arcsec"]
        best = np.array(
            [
                nearest(np.array([[x[i], y[i]]]), s)[0] if np.isfinite(x[i]) else np.inf
                for i, s in enumerate(subhalos)
            ]
        )
        chance = [nearest(grid, s) for s in subhalos]  # (309,) each
        threshold = np.inf if calibration is None else calibration.threshold
        out[cls] = {
            "best": best,
            "chance": np.array([c.mean() for c in chance]),
            "best_near": (best < near).astype(np.float64),
            "chance_near": np.array([(c < near).mean() for c in chance]),
            "flagged": scored.scores["imaging_gain"] > threshold,
        }
    if not out:
        raise SystemExit(f"error: no substructure class file in {data / split}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a LensFit 2 checkpoint folder")
    parser.add_argument("data", type=Path, help="a simulated dataset folder (subhalos.csv)")
    parser.add_argument("--split", choices=["val", "test"], default="val", help="(val)")
    parser.add_argument("--n", type=int, default=100, help="images per class (100)")
    parser.add_argument("--near", type=float, default=0.3, help="arcsec counted near (0.3)")
    args = parser.parse_args(argv)
    if args.n < 1:
        raise SystemExit("error: --n must be at least 1")
    torch.set_num_threads(1)
    near = args.near
    found = localise(args.checkpoint, args.data, args.split, args.n, near)
    print(f"{args.split}, first {args.n} per class; distances to the nearest subhalo, arcsec")
    print(f'| class | images | best blob: median, share within {near}" | chance: alike |')
    print("|---|---|---|---|")
    for cls, d in found.items():
        for label, keep in (("all", np.ones_like(d["flagged"])), ("flagged", d["flagged"])):
            if not keep.any():
                print(f"| {cls} ({label}) | 0 | - | - |")
                continue
            best, chance = d["best"][keep], d["chance"][keep]
            print(
                f"| {cls} ({label}) | {int(keep.sum())} | {np.median(best):.3f}, "
                f"{d['best_near'][keep].mean():.2f} | {np.median(chance):.3f}, "
                f"{d['chance_near'][keep].mean():.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
