"""Checkpoints: store and load a folder with `model.safetensors` and `config.json`.

No pickle anywhere: weights are safetensors, metadata is JSON checked by pydantic (its
schema, the card, is `models.card`). A bad checkpoint raises `CheckpointError` whose message
names the offending file.
"""

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deeplense.atomic import atomic_directory
from deeplense.errors import CheckpointError, UnknownModelError
from models.base import AnomalyModel, is_training_only
from models.card import CheckpointConfig
from models.registry import create_model
from models.storage import WeightsDtype, storage_state

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class LoadedCheckpoint:
    """A model in eval mode with its validated config and the folder it came from."""

    model: AnomalyModel
    config: CheckpointConfig
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def save_checkpoint(
    model: AnomalyModel,
    config: CheckpointConfig,
    directory: Path,
    overwrite: bool = False,
    weights_dtype: WeightsDtype = "float32",
) -> Path:
    """Write `directory/` atomically (temp folder, then rename). Refuses an existing folder
    unless `overwrite`, in which case the old one is replaced only once the new one is whole.
    `weights_dtype` "float16" stores the large tensors in half precision (models/storage.py)."""
    directory = Path(directory)
    state = storage_state(model, weights_dtype)
    with atomic_directory(directory, overwrite=overwrite, shared=True) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"architecture": model.architecture})
        (tmp / CONFIG_FILE).write_text(config.model_dump_json(indent=2) + "\n")
    return directory


def write_config(config: CheckpointConfig, directory: Path) -> None:
    """Replace config.json atomically (used to add calibration or metrics to a checkpoint)."""
    path = Path(directory) / CONFIG_FILE
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    tmp.write_text(config.model_dump_json(indent=2) + "\n")
    tmp.chmod(0o644)  # world-readable whatever the umask: containers read it as another user
    os.replace(tmp, path)


def read_config(directory: Path) -> CheckpointConfig:
    """Read and validate `directory/config.json`."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint folder needs {CONFIG_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a checkpoint config") from None
    try:
        return CheckpointConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'root'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise CheckpointError(f"{path}: invalid checkpoint config ({problems})") from None


def load_checkpoint(directory: Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load and validate a checkpoint folder; the model is returned in eval mode on `device`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint folder not found")
    config = read_config(directory)
    config_path = directory / CONFIG_FILE
    try:
        model = create_model(config.architecture, **config.arguments)
    except UnknownModelError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(
            f"{config_path}: bad arguments for {config.architecture}: {exc}"
        ) from None
    except (MemoryError, RuntimeError) as exc:  # e.g. a huge image_size: layers too large
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"{config_path}: cannot build {config.architecture} with these arguments ({reason})"
        ) from None
    size = model.image_size
    if (config.input.height, config.input.width) != (size, size):
        raise CheckpointError(
            f"{config_path}: input {config.input.height}x{config.input.width} does not match "
            f"the model's image_size {size}"
        )
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing (a checkpoint folder needs {WEIGHTS_FILE})")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{weights}: unreadable or truncated safetensors file ({exc})"
        ) from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(
            f"{weights}: weights do not match architecture {config.architecture!r} ({detail})"
        ) from None
    missing = [k for k in result.missing_keys if not is_training_only(model, k)]
    if missing or result.unexpected_keys:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for what, keys in (("missing", missing), ("unexpected", result.unexpected_keys))
            if keys
        )
        raise CheckpointError(
            f"{weights}: weights do not match architecture {config.architecture!r} ({detail})"
        )
    model.to(device).eval()
    return LoadedCheckpoint(model=model, config=config, path=directory)


def find_checkpoints(root: Path) -> dict[str, Path]:
    """Checkpoint folders directly under `root` (those holding config.json), by folder name."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint directory not found")
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if (folder / CONFIG_FILE).is_file():
            found[folder.name] = folder
        elif not folder.name.startswith("."):  # a half-copied checkpoint, not silently skipped
            log.warning("%s: no %s, not a checkpoint folder: skipped", folder, CONFIG_FILE)
    return found
