"""The bench_renderer scene through the `caustics` library, run in a venv that has it.

caustics is not a project dependency; `bench/bench_renderer.py --caustics-python PY` runs
this script with that interpreter. It needs only torch and caustics, reads a JSON job on
stdin (parameters drawn by bench_renderer, batch size, threads, repeats, an output folder),
writes unit-amplitude arcs and lens light of the first images to OUT/caustics.npz for the
agreement check (with caustics' PSF, and without it so that the bench can blur on pixels
as lenstronomy does), and prints one JSON object with its timings.

The scene: SIS + external shear (+ K point masses) in one SinglePlane, Sersic source and
lens light with lenstronomy's b_n (use_lenstronomy_k=True). caustics' Sersic radius is
measured along the major axis (R = sqrt(x'^2 + (y'/q)^2)), so R_eff of the project's
product-average convention becomes Re = R_eff / sqrt(q). Its PSF acts on the 2x
supersampled image (sigma 0.1" = 4 sub-pixels, cut at 5 sigma) before the 2x2 average, over
a field padded by the kernel's half-width (no edge extension).
"""

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import caustics
import numpy as np
import torch

PIXELS, PIXEL, SS, PSF_SIGMA, TRUNCATE = 150, 0.05, 2, 0.1, 5.0


def psf_image() -> torch.Tensor:
    """2-D Gaussian at the supersampled resolution, normalised."""
    sigma = PSF_SIGMA / (PIXEL / SS)
    radius = int(TRUNCATE * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = g[:, None] * g[None, :]
    return kernel / kernel.sum()


def simulator(n_subhalos: int, dtype: torch.dtype, psf: bool = True) -> Any:
    cosmology = caustics.FlatLambdaCDM(name="cosmology")
    lenses = [
        caustics.SIS(cosmology=cosmology, name="sis", x0=0.0, y0=0.0),
        caustics.ExternalShear(cosmology=cosmology, name="shear", x0=0.0, y0=0.0),
    ]
    lenses += [caustics.Point(cosmology=cosmology, name=f"sub{k}") for k in range(n_subhalos)]
    lens = caustics.SinglePlane(cosmology=cosmology, lenses=lenses, name="lens", z_l=0.5, z_s=1.0)
    source = caustics.Sersic(name="source", use_lenstronomy_k=True, Ie=1.0)
    light = caustics.Sersic(name="light", use_lenstronomy_k=True, Ie=1.0, x0=0.0, y0=0.0)
    sim = caustics.LensSource(
        lens=lens,
        source=source,
        lens_light=light,
        pixelscale=PIXEL,
        pixels_x=PIXELS,
        upsample_factor=SS,
        psf=psf_image().to(dtype) if psf else [[1.0]],
        name="sim",
    )
    return sim.to(dtype=dtype)


def vector(record: dict[str, Any], n_subhalos: int) -> list[float]:
    """The simulator's dynamic parameters in its order (see sim.dynamic_params)."""
    v = [record["theta_e"], record["gamma1"], record["gamma2"]]
    for x, y in record["subhalos"][:n_subhalos]:
        v += [x, y, record["theta_sub"]]
    for prefix, centre in (("source", True), ("lens", False)):
        if centre:
            v += [record["source_x"], record["source_y"]]
        q = record[f"{prefix}_q"]
        v += [q, record[f"{prefix}_phi"], record[f"{prefix}_n"]]
        v += [record[f"{prefix}_r_eff"] / math.sqrt(q)]  # product average -> major axis
    return v


def timed(fn: Any, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call, best of `repeats` after one warm-up."""
    fn()
    best = (math.inf, math.inf)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def main() -> None:
    job = json.load(sys.stdin)
    torch.set_num_threads(job["threads"])
    torch.set_flush_denormal(True)
    out = Path(job["out"])
    rows = []
    arrays: dict[str, np.ndarray] = {}
    for scene, records in job["records"].items():
        k = len(records[0]["subhalos"])
        for dtype in (torch.float32, torch.float64):
            sim = simulator(k, dtype)
            x = torch.tensor([vector(r, k) for r in records], dtype=dtype)
            name = str(dtype).removeprefix("torch.")
            n_agree = job["agreement"]
            with torch.no_grad():
                # one at a time: caustics' lens-light-only path fails under vmap
                arcs = torch.stack([sim(p, lens_light=False) for p in x[:n_agree]])
                lens = torch.stack([sim(p, source_light=False) for p in x[:n_agree]])
            arrays[f"{scene}_{name}_arcs"] = arcs.double().numpy()
            arrays[f"{scene}_{name}_lens"] = lens.double().numpy()
            # Without its PSF, for bench_renderer to blur on pixels as lenstronomy does.
            bare = simulator(k, dtype, psf=False)
            with torch.no_grad():
                arcs = torch.stack([bare(p, lens_light=False) for p in x[:n_agree]])
                lens = torch.stack([bare(p, source_light=False) for p in x[:n_agree]])
            arrays[f"{scene}_{name}_arcs_nopsf"] = arcs.double().numpy()
            arrays[f"{scene}_{name}_lens_nopsf"] = lens.double().numpy()
            batch = x[: job["batch"]]

            def forward(b: torch.Tensor = batch, s: Any = sim) -> None:
                with torch.no_grad():
                    torch.vmap(s)(b)

            def backward(b: torch.Tensor = batch, s: Any = sim) -> None:
                leaf = b.clone().requires_grad_(True)
                torch.vmap(s)(leaf).square().sum().backward()

            for mode, fn in (("forward", forward), ("forward+backward", backward)):
                wall, cpu = timed(fn, job["repeats"])
                rows.append(
                    dict(scene=scene, dtype=name, mode=mode, images=len(batch), wall=wall, cpu=cpu)
                )
    np.savez(out / "caustics.npz", **arrays)
    print(json.dumps({"version": caustics.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
