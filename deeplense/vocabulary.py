"""The dataset vocabulary, in one place: the classes, the normal one, their labels, and the
dataset's manifest (its file name, format and reader).

Every reader and writer of datasets (simulate, the dataset readers, fit, calibrate,
evaluate, the benches) takes these names from here.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from deeplense.errors import DatasetError
from deeplense.instrument import Instrument

NORMAL = "no_sub"  # lenses without substructure: what the models train on
SUBSTRUCTURE_CLASSES = ("sphere", "vort")  # spherical subhalos, a vortex (line of mass)
CLASSES = (NORMAL, *SUBSTRUCTURE_CLASSES)
LABELS = {NORMAL: 0, **{c: 1 for c in SUBSTRUCTURE_CLASSES}}  # ROC-AUC: substructure = 1
MANIFEST_FILE = "manifest.json"  # DIR/manifest.json: how a dataset was made
MANIFEST_FORMAT = 2  # 2: the study's photometry, per-image exposure and S/N


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read DIR/manifest.json; DatasetError naming the file if it is missing or malformed."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_FORMAT:
        raise DatasetError(f"{path}: not a simulator manifest of format {MANIFEST_FORMAT}")
    return manifest


def dataset_name(directory: Path) -> str | None:
    """The simulated dataset's name (model_a / model_b) from DIR/manifest.json, if recorded;
    None for a dataset without a readable manifest (e.g. the user's own images)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    name = manifest.get("dataset") if isinstance(manifest, dict) else None
    return str(name) if isinstance(name, str) else None


def dataset_label(directory: Path) -> str:
    """The name a card or calibration gives DIR: its manifest's dataset name, else the
    folder's own name (resolved, so that "." names the folder, not nothing)."""
    return dataset_name(directory) or Path(directory).resolve().name


def manifest_sha256(directory: Path) -> str | None:
    """Hex SHA-256 of DIR/manifest.json, or None when the dataset has no manifest."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc


def dataset_instrument(directory: Path) -> Instrument | None:
    """The instrument recorded in DIR/manifest.json (`instrument`, or for manifests before
    it, the simulator's pixel scale and PSF sigma); None without a readable manifest."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = read_manifest(directory)
    except DatasetError:  # not a simulator manifest: the instrument is not recorded
        return None
    record = manifest.get("instrument")
    if isinstance(record, dict) and record.get("psf") == "gaussian":
        return Instrument(
            pixel_scale=float(record["pixel_scale_arcsec"]),
            psf_sigma=float(record["psf_sigma_arcsec"]),
        )
    image, config = manifest.get("image", {}), manifest.get("config", {})
    if "pixel_scale_arcsec" in image and "psf_sigma" in config:
        return Instrument(
            pixel_scale=float(image["pixel_scale_arcsec"]), psf_sigma=float(config["psf_sigma"])
        )
    return None
