"""Speed and accuracy of the torch renderer (deeplense.lensing), optionally against caustics.

The renderer is the project's one piece of lensing physics: the simulator
(training.simulate, through training.lensing.render) and LensFit both draw through it.

Prints four tables, for Model A parameters drawn as the simulator draws them (no_sub, and
sphere with 25 subhalos of 0.024"), 150x150 pixels, 2x2 supersampling, PSF 0.1":

  1. speed: images/s at --batch on --threads CPU threads, float32 and float64, forward only
     (no autograd) and forward + backward (gradient of the summed squared image with respect
     to every parameter); "per CPU-s" divides by the process's CPU time, which a shared
     machine disturbs less than wall-clock time;
  2. agreement with lenstronomy (the project's reference): max |ours - lenstronomy| / peak
     of lenstronomy, over the first --agreement images, arcs and lens light separately;
  3. the simulator's budget: CPU ms per image at float64, 1 thread, for this renderer
     (batch --batch, and one image per call, as the simulator calls it), and images/s per
     core of a whole simulator step (render + Poisson noise + [0, 1] scaling);
  4. reproducibility: whether an image's bits depend on its batch or on the thread count.

With --caustics-python PY (a Python that has caustics, torch and numpy; caustics is not a
project dependency) the same scene is timed and checked through caustics too, by running
bench/caustics_scene.py with PY.

    python bench/bench_renderer.py [--batch 32] [--threads 2] [--repeats 3]
        [--caustics-python /tmp/caustics-venv/bin/python]
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# As the service (app/__init__.py): idle OpenMP threads sleep instead of spinning. On a
# shared machine spinning threads made 2-thread renders up to 20x slower than 1 thread.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplense.lensing.torch_renderer import (  # noqa: E402
    LensBatch,
    combine,
    psf_blur,
    render_components,
)
from deeplense.numerics import set_process_numerics  # noqa: E402
from training.lensing.noise import min_max_scale, poisson_observation  # noqa: E402
from training.lensing.render import LensParams, SimConfig  # noqa: E402
from training.simulate import DATASETS, draw_params, image_rngs  # noqa: E402

SEED = 12345
SCENES = {"no_sub": "no_sub", "sub25": "sphere"}  # scene name -> simulator class
SOURCE_AMPLITUDE, LENS_AMPLITUDE = 0.8, 1.2  # counts/s at R_eff (REFERENCE.md, Photometry)
SIM = SimConfig()
CONFIG = SIM.render_config()  # the simulator's grid and PSF


def records(cls: str, count: int) -> list[LensParams]:
    spec = DATASETS["model_a"]
    return [draw_params(spec, cls, image_rngs(SEED, "test", cls, i)[0]) for i in range(count)]


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one call, the best of `repeats` after a warm-up call."""
    fn()
    best = (math.inf, math.inf)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def forward(batch: LensBatch) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return combine(render_components(batch, CONFIG), SOURCE_AMPLITUDE, LENS_AMPLITUDE)

    return run


def forward_backward(batch: LensBatch) -> Callable[[], object]:
    def run() -> object:
        leaves = {k: v.detach().requires_grad_(True) for k, v in batch.tensors().items()}
        image = combine(
            render_components(LensBatch(**leaves), CONFIG), SOURCE_AMPLITUDE, LENS_AMPLITUDE
        )
        image.square().sum().backward()
        return leaves

    return run


def speed_table(rows: list[dict[str, object]], threads: int) -> None:
    print(f"\n1. speed, batch of 150x150 images, {threads} CPU threads (best of repeats)")
    print(f"{'renderer':10} {'scene':7} {'dtype':8} {'mode':17} {'s/batch':>8} "
          f"{'images/s':>9} {'per CPU-s':>10}")  # fmt: skip
    for r in rows:
        wall, cpu, n = float(str(r["wall"])), float(str(r["cpu"])), int(str(r["images"]))
        print(f"{r['renderer']!s:10} {r['scene']!s:7} {r['dtype']!s:8} {r['mode']!s:17} "
              f"{wall:8.3f} {n / wall:9.1f} {n / cpu:10.1f}")  # fmt: skip


def ours_speed(batches: dict[str, list[LensParams]], repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for scene, recs in batches.items():
        for dtype in (torch.float32, torch.float64):
            batch = LensBatch.from_records(recs, dtype=dtype)
            for mode, fn in (("forward", forward), ("forward+backward", forward_backward)):
                wall, cpu = timed(fn(batch), repeats)
                rows.append(dict(renderer="ours", scene=scene, dtype=str(dtype)[6:], mode=mode,
                                 images=len(recs), wall=wall, cpu=cpu))  # fmt: skip
    return rows


def lenstronomy_components(recs: list[LensParams]) -> list[tuple[np.ndarray, np.ndarray]]:
    from training.lensing.reference import LenstronomyRenderer

    renderer = LenstronomyRenderer(SIM)
    return [renderer.render(p) for p in recs]


def agreement_table(
    results: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]],
    reference: dict[str, list[tuple[np.ndarray, np.ndarray]]],
) -> None:
    print("\n2. agreement with lenstronomy: max |diff| / lenstronomy's peak, worst image"
          " (caustics+: caustics without its PSF, then the pixel-level PSF)")  # fmt: skip
    print(f"{'renderer':10} {'scene':7} {'dtype':8} {'arcs':>10} {'lens light':>11}")
    for (renderer, scene, dtype), (arcs, lens) in results.items():
        worst = [0.0, 0.0]
        for i, (their_arcs, their_lens) in enumerate(reference[scene]):
            for j, (ours, theirs) in enumerate(((arcs[i], their_arcs), (lens[i], their_lens))):
                diff = np.abs(np.asarray(ours, dtype=np.float64).reshape(theirs.shape) - theirs)
                worst[j] = max(worst[j], float(diff.max() / theirs.max()))
        print(f"{renderer:10} {scene:7} {dtype:8} {worst[0]:10.2e} {worst[1]:11.2e}")


def pixel_psf(images: np.ndarray) -> np.ndarray:
    """The renderer's pixel-level PSF (lenstronomy's) on images (N, n, n): (N, n, n)."""
    return psf_blur(torch.from_numpy(images)[:, None], CONFIG)[:, 0].numpy()


def one_per_call(singles: list[LensBatch]) -> list[object]:
    return [forward(b)() for b in singles]


def noise(rates: np.ndarray, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Poisson noise and [0, 1] scaling of every rate image (N, n, n), as the simulator's."""
    rng = rng or np.random.default_rng(0)
    return [min_max_scale(poisson_observation(x, SIM.exposure, SIM.sky, rng)) for x in rates]


def simulator_table(batches: dict[str, list[LensParams]], repeats: int) -> None:
    torch.set_num_threads(1)
    print("\n3. simulator budget: float64, 1 thread (40 images/s/core = 25 ms per image)")
    print(f"{'scene':7} {'step':44} {'CPU ms/image':>12} {'images/s/core':>14}")
    for scene, recs in batches.items():
        batch = LensBatch.from_records(recs, dtype=torch.float64)
        n = len(recs)
        _, ours_cpu = timed(forward(batch), repeats)
        singles = [LensBatch.from_records([p], dtype=torch.float64) for p in recs]
        _, single_cpu = timed(partial(one_per_call, singles), repeats)
        with torch.no_grad():
            images = combine(render_components(batch, CONFIG), SOURCE_AMPLITUDE, LENS_AMPLITUDE)
        _, noise_cpu = timed(partial(noise, images[:, 0].numpy()), repeats)
        for name, cpu in (
            (f"torch renderer, batch {n}", ours_cpu),
            ("torch renderer, one image per call", single_cpu),
            ("Poisson noise + [0, 1] scaling (NumPy)", noise_cpu),
            ("simulator step: torch (one per call) + noise", single_cpu + noise_cpu),
        ):
            print(f"{scene:7} {name:44} {1e3 * cpu / n:12.2f} {n / cpu:14.1f}")


def bits_table(batches: dict[str, list[LensParams]]) -> None:
    print("\n4. reproducibility of the torch renderer, float64")
    for scene, recs in batches.items():
        with torch.no_grad():
            components = render_components(LensBatch.from_records(recs), CONFIG)
        # Is the torch render itself reproducible, whatever the batch and thread count?
        threads = torch.get_num_threads()
        with torch.no_grad():
            alone = [render_components(LensBatch.from_records([p]), CONFIG).arcs for p in recs]
            torch.set_num_threads(2 if threads == 1 else 1)
            other = render_components(LensBatch.from_records(recs), CONFIG).arcs
            torch.set_num_threads(threads)
        in_batch = torch.equal(torch.cat(alone), components.arcs)
        threads_too = torch.equal(other, components.arcs)
        print(f"{scene:7} torch arcs bit-identical alone and in a batch of {len(recs)}: "
              f"{in_batch}; with 1 and 2 threads: {threads_too}")  # fmt: skip


def caustics_run(
    python: str, batches: dict[str, list[LensParams]], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    job = {
        "threads": args.threads,
        "batch": args.batch,
        "repeats": args.caustics_repeats,
        "agreement": args.agreement,
        "out": str(out),
        "records": {s: [dataclasses.asdict(p) for p in recs] for s, recs in batches.items()},
    }
    done = subprocess.run(
        [python, str(REPO / "bench" / "caustics_scene.py")],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"caustics_scene.py failed: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls, best kept")
    parser.add_argument("--agreement", type=int, default=4, help="images per lenstronomy check")
    parser.add_argument("--caustics-python", help="a Python with caustics installed")
    parser.add_argument("--caustics-repeats", type=int, default=1)
    args = parser.parse_args()
    set_process_numerics()  # as the service and the training CLI do
    torch.set_num_threads(args.threads)
    batches = {scene: records(cls, args.batch) for scene, cls in SCENES.items()}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at start")  # fmt: skip

    rows = ours_speed(batches, args.repeats)
    results: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}
    for scene, recs in batches.items():
        for dtype in (torch.float32, torch.float64):
            with torch.no_grad():
                c = render_components(
                    LensBatch.from_records(recs[: args.agreement], dtype=dtype), CONFIG
                )
            results["ours", scene, str(dtype)[6:]] = (
                c.arcs.double().numpy(),
                c.lens.double().numpy(),
            )
    if args.caustics_python:
        with tempfile.TemporaryDirectory() as tmp:
            caustics = caustics_run(args.caustics_python, batches, args, Path(tmp))
            with np.load(Path(tmp) / "caustics.npz", allow_pickle=False) as arrays:
                for scene in batches:
                    for precision in ("float32", "float64"):
                        key = f"{scene}_{precision}"
                        results["caustics", scene, precision] = (
                            arrays[f"{key}_arcs"],
                            arrays[f"{key}_lens"],
                        )
                        # caustics' rays and Sersic, our pixel-level PSF (lenstronomy's)
                        results["caustics+", scene, precision] = (
                            pixel_psf(arrays[f"{key}_arcs_nopsf"]),
                            pixel_psf(arrays[f"{key}_lens_nopsf"]),
                        )
        rows += [dict(r, renderer="caustics") for r in caustics["rows"]]
        print(f"caustics {caustics['version']}")
    speed_table(rows, args.threads)
    reference = {s: lenstronomy_components(recs[: args.agreement]) for s, recs in batches.items()}
    agreement_table(results, reference)
    simulator_table(batches, args.repeats)
    bits_table(batches)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
