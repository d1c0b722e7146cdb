"""Atomic outputs: build a folder beside its destination, move it into place when whole.

Every command that writes a result folder (datasets, checkpoints, reports) goes through
`atomic_directory`, so a crash or Ctrl-C leaves either the old result or the new one, never a
half-written folder, and an existing result is replaced only when the caller allows it.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deeplense.errors import OutputExistsError


@contextmanager
def atomic_directory(out: Path, overwrite: bool = False, shared: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `out`; on success it replaces `out`, on error it goes.

    Raises OutputExistsError if `out` exists and not `overwrite`. `shared` makes the result
    world-readable, folders 0755 and files 0644, whatever the writers chose (mkdtemp makes the
    folder private, safetensors its file 0600): datasets, reports and checkpoints, which a
    container running as another user must read.
    """
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if shared:
            make_world_readable(tmp)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_world_readable(root: Path) -> None:
    """chmod `root` and every folder below it 0755, every file 0644 (symlinks untouched)."""
    root.chmod(0o755)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o755)
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o644)


def replace_directory(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` to `out`, replacing an old `out` only once `tmp` is whole."""
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)
