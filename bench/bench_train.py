"""Training throughput per model: images/s of the real training step on the current device.

Runs each model's own step (`training.steps.make_step`: Adam + one-cycle, the AAE's three
updates, mixed precision on CUDA) on a batch already on the device, so the numbers are the
compute cost alone (data loading from a memory-mapped .npy is far cheaper). Default geometry
(150x150, the registry's default configs), a few warm-up steps, then timed steps until either
the step count or the time budget per model runs out; the median step time is reported
(robust to other processes sharing the machine).

    python bench/bench_train.py                  # auto device; batch 32 on CPU, 100 on CUDA
    python bench/bench_train.py --models vae rbm --batch-size 100 --seconds 30
    python bench/bench_train.py --precision bf16 --no-channels-last   # the other settings
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from deeplense.device import resolve_device  # noqa: E402
from models.base import count_parameters  # noqa: E402
from training.steps import PRECISIONS, Precision, make_step  # noqa: E402

EPOCH_IMAGES = 25_000  # the study's training set


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    name: str,
    device: torch.device,
    batch_size: int,
    warmup: int,
    steps: int,
    seconds: float,
    precision: Precision,
    channels_last: bool,
) -> dict[str, float]:
    """Median time of `steps` training steps (or as many as fit in `seconds`) after `warmup`."""
    torch.manual_seed(0)
    model = models.create_model(name).to(device).train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)  # as `fit` does
    size = model.image_size
    step = make_step(model, 2e-3, 1e-5, total_steps=warmup + steps + 1, precision=precision)
    x = torch.rand(batch_size, 1, size, size, device=device)  # (B, 1, 150, 150)
    x = x.contiguous(memory_format=layout)
    for _ in range(warmup):
        step(x)
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < steps and time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        step(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)  # robust to other processes sharing the machine
    return {
        "params": count_parameters(model),
        "steps": len(times),
        "s_per_step": median,
        "images_per_s": batch_size / median,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=models.list_models())
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--batch-size", type=int, default=None, help="32 on CPU, 100 on CUDA")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps at most (20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time per model at most")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="as fit's")
    parser.add_argument(
        "--no-channels-last", dest="channels_last", action="store_false", help="as fit's"
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    batch = args.batch_size or (100 if device.type == "cuda" else 32)
    precision = Precision.for_device(device, args.precision)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({where}), {precision.name}, "
        f"{'channels_last' if args.channels_last else 'NCHW'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {batch}, 150x150, default configs"
    )
    header = f"{'model':6} {'params':>10} {'steps':>6} {'s/step':>8} {'images/s':>10} {'epoch*':>9}"
    print(header)
    print("-" * len(header))
    for name in args.models:
        r = bench_model(
            name, device, batch, args.warmup, args.steps, args.seconds, precision,
            args.channels_last,
        )  # fmt: skip
        epoch_min = EPOCH_IMAGES / r["images_per_s"] / 60
        print(
            f"{name:6} {r['params']:>10,} {r['steps']:>6} {r['s_per_step']:>8.3f} "
            f"{r['images_per_s']:>10.1f} {epoch_min:>7.1f} m"
        )
    print(f"* one epoch of {EPOCH_IMAGES:,} training images at that rate (compute only)")


if __name__ == "__main__":
    main()
