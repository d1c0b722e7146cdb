"""`deeplense serve`: the scoring service under uvicorn.

Flags override the service's `DEEPLENSE_*` variables (app/settings.py); the variables still
set everything the flags leave out, so `deeplense serve` and `uvicorn app.main:app` agree.
"""

import argparse
from pathlib import Path
from typing import Any

STARTUP_FAILED = 1  # exit status after the models failed to load (already logged in one line)


def port(text: str) -> int:
    """argparse type: a TCP port, 1 to 65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must lie between 1 and 65535, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the scoring service (upload page, /score, /docs) on HOST:PORT",
        description=(
            "Serve every checkpoint folder under --checkpoints over HTTP: the upload page at /, "
            "the API at /score and /models, its documentation at /docs and /redoc (served "
            "from the package, no CDN), /health, /ready and /metrics. Settings not given as "
            "flags come from DEEPLENSE_* environment variables (README, Configuration)."
        ),
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 answers on every interface)",
    )
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--checkpoints",
        type=Path,
        default=None,
        help="folder of checkpoint folders (DEEPLENSE_CHECKPOINT_DIR; default: the shipped "
        "Model R set, for real images; checkpoints/model_a serves the study's Model A)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="DEEPLENSE_DEVICE: auto (CUDA when available), cpu or cuda (default auto)",
    )
    p.add_argument(
        "--default-model", default=None, help="DEEPLENSE_DEFAULT_MODEL, e.g. aae or ensemble"
    )
    # Ctrl-C and SIGTERM are how a service is stopped: uvicorn shuts down gracefully, then
    # re-raises the signal; training/__main__.py ends quietly with 0 rather than an error.
    p.set_defaults(func=run, stop_is_clean=True)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    flags: dict[str, Any] = {
        "checkpoint_dir": args.checkpoints,
        "device": args.device,
        "default_model": args.default_model,
    }
    settings = Settings(**{k: v for k, v in flags.items() if v is not None})
    app = create_app(settings)
    # uvicorn's own log level follows the service's. A start-up failure exits non-zero with
    # one line naming the file (app/startup.py): a bad folder or config before the server
    # answers (uvicorn's exit 3), bad weights or an overrun while it loads them in the
    # background, which stops the server by SIGTERM (exit STARTUP_FAILED, not a clean stop).
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower())
    except BaseException:  # the signal that stopped it (Terminated, KeyboardInterrupt)
        if app.state.service.startup.problem is None:
            raise
    return STARTUP_FAILED if app.state.service.startup.problem is not None else 0
