"""`python -m training fit`: train models on DIR/train no_sub images, calibrate, export.

Also runs under `torchrun --nproc_per_node=K -m training fit ...` (DistributedDataParallel).
"""

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from training.commands import RegistryChoice, registered_models
from training.commands.calibrate import fraction
from training.commands.evaluate import non_negative_int, positive_int

# training.plan.FitOptions' defaults, which every flag below shows; written out so that
# `--help` need not import torch (tests/training/test_cli.py checks they agree), as are the
# choices of training.steps.PRECISIONS and models.storage.WEIGHTS_DTYPES.
D = argparse.Namespace(
    model="all", epochs=50, batch_size=100, device="auto", seed=0, lr=2e-3,
    weight_decay=1e-5, fpr=0.05, num_workers=None, max_train=None, precision="auto",
    weights_dtype="float32", pixel_scale=None, psf_sigma=None,
)  # fmt: skip
PRECISIONS = ("auto", "fp32", "bf16")
WEIGHTS_DTYPES = ("float32", "float16")


def arch_arg(text: str) -> tuple[str, Any]:
    """argparse type: KEY=VALUE, VALUE read as JSON when it parses (8, 0.5, [4,8,8]), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"latent_dim\": 64}'")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="train models on DIR/train no_sub images, calibrate on DIR/val, write checkpoints",
        description=(
            "Train each model on the no_sub training images (Adam, one-cycle schedule; the AAE "
            "with its own three learning rates), log a validation loss per epoch, calibrate the "
            "threshold on DIR/val no_sub and write CKPT_DIR/<model>/. Run it under "
            "`torchrun --nproc_per_node=K -m training fit ...` to train with "
            "DistributedDataParallel (batch size is per process)."
        ),
    )
    p.add_argument(
        "--model",
        default=D.model,
        type=RegistryChoice(registered_models, "all"),
        metavar="MODEL",
        help="a registered model (lensfit, aae, ...; a wrong name lists them) or all "
        "(default: all, one after another)",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder with train/ and val/")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (CKPT_DIR)")
    p.add_argument("--epochs", type=positive_int, default=D.epochs, help="epochs (%(default)s)")
    p.add_argument(
        "--batch-size", type=positive_int, default=D.batch_size, help="per process (%(default)s)"
    )
    p.add_argument(
        "--device", default=D.device, choices=["auto", "cuda", "cpu"], help="(%(default)s)"
    )
    p.add_argument("--seed", type=int, default=D.seed, help="random seed (%(default)s)")
    p.add_argument("--lr", type=float, default=D.lr, help="peak learning rate (%(default)g)")
    p.add_argument(
        "--weight-decay", type=float, default=D.weight_decay, help="Adam's (%(default)g)"
    )
    p.add_argument("--fpr", type=fraction, default=D.fpr, help="calibration FPR (%(default)s)")
    p.add_argument("--resume", action="store_true", help="continue from the saved state")
    p.add_argument("--overwrite", action="store_true", help="replace existing checkpoints")
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default=D.num_workers,
        help="data loader processes (default: 0 on CPU, 4 on CUDA)",
    )
    p.add_argument(
        "--max-train", type=positive_int, default=D.max_train, help="first N train images"
    )
    p.add_argument(
        "--precision",
        default=D.precision,
        choices=PRECISIONS,
        help="auto: bf16 (or fp16) autocast on CUDA, float32 on CPU; fp32 or bf16 to force one",
    )
    p.add_argument(
        "--weights-dtype",
        default=D.weights_dtype,
        choices=WEIGHTS_DTYPES,
        help="checkpoint storage: float16 halves it (large tensors only; the model is rounded "
        "before it is calibrated, so the calibration is that of the stored weights)",
    )
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep conv tensors in NCHW order (default: channels_last, faster on CPU and GPU)",
    )
    p.add_argument(
        "--arch-arg",
        type=arch_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, repeatable (latent_dim=64, channels=[4,8,8], beta=0.01); "
        "with --model all each model takes the keys it knows",
    )
    p.add_argument(
        "--arch-args-json",
        type=json_object,
        default={},
        metavar="JSON",
        help="model config overrides as one JSON object (--arch-arg wins on a clash)",
    )
    p.add_argument(
        "--pixel-scale",
        type=float,
        default=D.pixel_scale,
        help="arcsec per pixel of data without a manifest (default: the manifest's; else the "
        "study's 0.05)",
    )
    p.add_argument(
        "--psf-sigma",
        type=float,
        default=D.psf_sigma,
        help="Gaussian PSF sigma in arcsec of data without a manifest (default: the "
        "manifest's; else the study's 0.1)",
    )
    p.add_argument(
        "--tiny",
        action="store_true",
        help="start from each model's test-size config (Config.tiny(): small layers) before "
        "the --arch-arg overrides; for smoke tests, not science",
    )
    p.set_defaults(func=functools.partial(_run, parser=p))


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from training.fit import FitOptions, prepare, run

    options = FitOptions(
        data=args.data,
        out=args.out,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
        lr=args.lr,
        weight_decay=args.weight_decay,
        fpr=args.fpr,
        resume=args.resume,
        overwrite=args.overwrite,
        num_workers=args.num_workers,
        max_train=args.max_train,
        precision=args.precision,
        channels_last=args.channels_last,
        weights_dtype=args.weights_dtype,
        arch_args={**args.arch_args_json, **dict(args.arch_arg)},
        tiny=args.tiny,
        pixel_scale=args.pixel_scale,
        psf_sigma=args.psf_sigma,
    )
    try:
        plan = prepare(options)
    except (TypeError, ValueError) as exc:  # a model config refused an arch arg
        parser.error(str(exc))
    for result in run(plan):
        if result.checkpoint is None:
            continue
        last = result.history[-1] if result.history else {}
        losses = ", ".join(f"{k} {v:.5g}" for k, v in last.items() if k.startswith("val_"))
        print(f"{result.name}: {result.checkpoint} ({losses or 'no epochs run'})")
    return 0
