"""Write constraints.txt: the exact version of every package the project needs, as installed.

Walks the dependency closure of `deeplense-anomaly[train,dev]` (pyproject.toml) through the
installed packages' metadata, so packages that happen to sit in the venv but that nothing
here needs stay out. torch is left out: TORCH_PIN (Makefile) and TORCH_VERSION (Dockerfile)
pin it, and tests/test_compose.py checks they agree. `make` and the Dockerfile both install
with `--constraint constraints.txt`; run this after changing a dependency:

    .venv/bin/python scripts/lock_constraints.py
"""

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
UNPINNED = {"torch"}  # pinned by TORCH_PIN / TORCH_VERSION
HEADER = """\
# Exact versions of every dependency of deeplense-anomaly[train,dev] except torch (pinned by
# TORCH_PIN in the Makefile and TORCH_VERSION in the Dockerfile; a test checks they agree).
# Used by `make install`/`make serve` and by the Dockerfile: `pip install --constraint`.
# Regenerate with `.venv/bin/python scripts/lock_constraints.py` after changing pyproject.toml.
"""


def closure(requirements: list[str], extras: set[str]) -> dict[str, str]:
    """canonical name -> installed version, for `requirements` and everything they need."""
    found: dict[str, str] = {}
    pending = [(Requirement(r), extras) for r in requirements]
    while pending:
        req, active = pending.pop()
        env = default_environment()
        if req.marker and not any(
            req.marker.evaluate({**env, "extra": e}) for e in (active or {""})
        ):
            continue
        name = canonicalize_name(req.name)
        if name in found:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"error: {req.name} is required but not installed; run `make install`")
        found[name] = dist.version
        pending += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    return found


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in ("train", "dev"):
        requirements += project["optional-dependencies"][extra]
    pins = closure(requirements, set())
    lines = [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in UNPINNED]
    out = ROOT / "constraints.txt"
    tmp = out.with_name(".constraints.txt.tmp")
    tmp.write_text(HEADER + "\n".join(lines) + "\n")
    tmp.replace(out)
    print(f"wrote {out.name}: {len(lines)} packages")


if __name__ == "__main__":
    main()
