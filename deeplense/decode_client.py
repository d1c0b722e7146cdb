"""The parent's side of a decoding process (`deeplense.decode_worker`): start it, send a job,
read its answer within a deadline, kill it. The service's pool (`app.decode_pool`) and the
`score` CLI (`TimedDecoder`) both decode untrusted files this way, so a file that makes a
decoder loop or balloon costs at most a timeout and the worker's memory cap.
"""

import contextlib
import json
import os
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import deeplense
from deeplense.decode_worker import READY, extras_from, frames_expected
from deeplense.errors import ImageTooLargeError, InvalidImageError
from deeplense.imaging import DecodedStack, decode_stack

_LENGTH = struct.Struct(">I")
NPY_MAGIC = b"\x93NUMPY"
# The folder holding the `deeplense` package: the worker imports this very copy of it.
_PACKAGE_ROOT = Path(deeplense.__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0  # a worker's imports on a busy machine; not part of any file's time


class WorkerGone(Exception):
    """The worker closed its pipe or sent something malformed."""


class DecodeProcess:
    """One decoding process and the parent's ends of its pipes."""

    def __init__(self, memory_bytes: int | None) -> None:
        # --parent-pid: the worker exits by itself when this process dies (even by SIGKILL).
        command = [sys.executable, "-m", "deeplense.decode_worker", "--parent-pid"]
        command.append(str(os.getpid()))
        if memory_bytes is not None:
            command += ["--memory-bytes", str(memory_bytes)]
        self.process = subprocess.Popen(
            command, cwd=_PACKAGE_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin = self.process.stdin
        self.stdout = self.process.stdout.fileno()
        self.ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self, n: int, deadline: float) -> bytes | None:
        """Exactly `n` bytes from the worker; None when `deadline` passes first."""
        chunks, missing = [], n
        while missing:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([self.stdout], [], [], wait)[0]:
                return None
            chunk = os.read(self.stdout, min(missing, 1 << 20))
            if not chunk:
                raise WorkerGone("the worker closed its output")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def read_frame(self, deadline: float) -> bytes | None:
        head = self.read(_LENGTH.size, deadline)
        if head is None:
            return None
        return self.read(_LENGTH.unpack(head)[0], deadline)

    def wait_ready(self, deadline: float) -> bool:
        if not self.ready:
            byte = self.read(1, deadline)
            if byte is not None and byte != READY:
                raise WorkerGone("the worker did not start")
            self.ready = byte is not None
        return self.ready

    def send(self, header: dict[str, object], data: bytes) -> None:
        payload = json.dumps(header).encode()
        try:
            self.stdin.write(_LENGTH.pack(len(payload)) + payload + _LENGTH.pack(len(data)))
            self.stdin.write(data)
            self.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise WorkerGone("the worker is gone") from exc

    def exchange(
        self, job: dict[str, object], data: bytes, deadline: float
    ) -> tuple[dict[str, object], list[bytes]] | None:
        """Send one job and read its answer: the header and its data frames; None when
        `deadline` passes first (the caller kills the worker). WorkerGone, ValueError or
        KeyError when the worker breaks the protocol."""
        self.send(job, data)
        raw = self.read_frame(deadline)
        if raw is None:
            return None
        header = json.loads(raw)
        frames: list[bytes] = []
        if header["kind"] == "ok":
            for _ in range(frames_expected(header)):
                frame = self.read_frame(deadline)
                if frame is None:
                    raise WorkerGone("fewer data frames than announced after an ok")
                frames.append(frame)
        return header, frames

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._close_pipes()

    def stop(self, timeout_s: float) -> None:
        try:
            self.stdin.close()  # end of input: the worker exits
            self.process.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def decoded_stack(header: dict[str, object], frames: list[bytes], filename: str) -> DecodedStack:
    """A worker's answer as a DecodedStack (its pixels a read-only view of the frame), or
    the InvalidImageError (ImageTooLargeError) it reports."""
    if header["kind"] != "ok":
        error = ImageTooLargeError if header["kind"] == "too_large" else InvalidImageError
        raise error(filename, str(header["problem"]))
    shape = tuple(int(d) for d in header["shape"])  # type: ignore[attr-defined]
    array = np.frombuffer(frames[0], dtype=np.float32).reshape(shape)
    warnings = tuple(str(w) for w in header["warnings"])  # type: ignore[attr-defined]
    return DecodedStack(array, str(header["format"]), warnings, extras_from(header, frames[1:]))


class TimedDecoder:
    """The `score` CLI's reading: every file but a .npy (our own bounded reader, kept as a
    memory map) decodes as a stack in one worker process, with `timeout_s` per file and the
    worker's address space capped at `memory_bytes`, like the service's uploads. A worker
    past its time is killed and the file refused; the next file gets a fresh worker."""

    def __init__(self, timeout_s: float, memory_bytes: int | None) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._worker: DecodeProcess | None = None

    def decode(self, path: Path, filename: str, max_pixels: int) -> DecodedStack:
        """`path` as a stack (N, H, W), unchecked values; InvalidImageError when it is bad
        or takes longer than `timeout_s`."""
        with path.open("rb") as fh:
            if fh.read(len(NPY_MAGIC)) == NPY_MAGIC:
                return decode_stack(
                    path, filename=filename, max_pixels=max_pixels, check_values=False
                )
        worker = self._worker or DecodeProcess(self.memory_bytes)
        self._worker = worker
        job = {"filename": filename, "max_pixels": max_pixels, "stack": True, "path": str(path)}
        try:
            if not worker.wait_ready(time.monotonic() + START_TIMEOUT_S):
                raise WorkerGone("the decoding worker did not start")
            answer = worker.exchange(job, b"", time.monotonic() + self.timeout_s)
        except (WorkerGone, OSError, ValueError, KeyError) as exc:
            self._discard()
            raise InvalidImageError(filename, "the decoder failed on this file") from exc
        if answer is None:
            self._discard()
            raise InvalidImageError(
                filename,
                f"decoding took longer than {self.timeout_s:g} s (--decode-timeout-s); "
                "the file is refused",
            )
        header, frames = answer
        if header.get("retire"):
            self.close()
        return decoded_stack(header, frames, filename)

    def _discard(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def close(self) -> None:
        """Stop the worker (it exits at the end of its input)."""
        if self._worker is not None:
            self._worker.stop(timeout_s=5.0)
            self._worker = None
