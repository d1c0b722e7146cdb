"""Scoring prepared images in several one-thread processes (`deeplense score --workers N`).

Measured on the project's 2-core CPU (docs/results.md, "LensFit 2 scores twice as fast",
"A design stored by columns"): one LensFit 2 fit is a chain of small operations, so torch's
threads inside one image share the work less well than processes that each fit their own
images on one thread (2.0 against 2.6 images a second on two cores, start-up included;
0.58 against 0.88 before the fit's arithmetic was tightened). A `ScoringPool` holds N such
processes, each with the checkpoint loaded once; `submit` cuts a batch of observations into
consecutive pieces and queues them in the processes, and its `result` joins their rows in
order (`deeplense.inference.concatenate_scored`), so rows come out as one process would give
them. `deeplense score` queues the next batch before it collects one, so the processes do
not wait at a batch's end while the parent reads files. An image's numbers do not depend on
its batch mates for LensFit 2 (it fits one image at a time on a CPU); the thread count
itself moves a fit's sums to about 1e-5 of the loss.

Processes are started with "spawn" (a forked child of a process that has used torch's
thread pool can hang), so each loads torch and the checkpoint itself: about two seconds.
"""

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import torch

from deeplense.inference import ScoredBatch, concatenate_scored, score_observations
from deeplense.numerics import set_process_numerics
from deeplense.observation import Observation
from models.base import AnomalyModel
from models.checkpoint import load_checkpoint

PIECES_PER_WORKER = 4  # a batch is cut into this many pieces per process: even loads
_MODEL: AnomalyModel | None = None  # the checkpoint's model, in each worker process


def _start_worker(checkpoint: str, threads: int) -> None:
    """A worker's start: the service's numerics (`set_process_numerics`), `threads` torch threads,
    the checkpoint loaded on the CPU. Ctrl-C reaches the whole process group; the parent
    alone handles it (and stops the workers). A parent killed outright (SIGKILL, the OOM
    killer) cannot stop them, so each also watches its parent and exits when it is gone."""
    global _MODEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), daemon=True).start()
    set_process_numerics()
    torch.set_num_threads(threads)
    _MODEL = load_checkpoint(Path(checkpoint), device="cpu").model


def _exit_with(parent_sentinel: int) -> None:
    """Wait until the parent process is gone, then end this worker at once."""
    multiprocessing.connection.wait([parent_sentinel])
    os._exit(1)


def _score_piece(task: tuple[list[Observation], int, tuple[str, ...]]) -> ScoredBatch:
    observations, batch_size, scores = task
    assert _MODEL is not None, "worker not started"
    try:
        return score_observations(
            _MODEL, observations, device="cpu", batch_size=batch_size, scores=scores
        )
    except Exception as exc:  # not every exception survives pickling back to the parent
        raise RuntimeError(f"scoring failed in a worker: {type(exc).__name__}: {exc}") from None


class ScoringPool:
    """`workers` processes of `threads` torch threads, each holding the checkpoint at
    `checkpoint` on the CPU (module doc). Use as a context manager, or `close()` it."""

    def __init__(self, checkpoint: Path, workers: int, threads: int = 1) -> None:
        if workers < 1 or threads < 1:
            raise ValueError(f"need workers >= 1 and threads >= 1, got {workers}, {threads}")
        self.workers = workers
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(str(checkpoint), threads),
        )

    def submit(
        self, observations: Sequence[Observation], batch_size: int, scores: Sequence[str]
    ) -> "PendingScores":
        """Queue `score_observations` of every observation, spread over the processes, and
        return at once: a caller that prepares the next batch meanwhile and submits it
        before collecting this one keeps every process busy across the batches' ends."""
        n = len(observations)
        if n == 0:
            raise ValueError("no observations to score")
        pieces = np.array_split(np.arange(n), min(n, self.workers * PIECES_PER_WORKER))
        tasks = [([observations[i] for i in piece], batch_size, tuple(scores)) for piece in pieces]
        try:
            return PendingScores([self._executor.submit(_score_piece, task) for task in tasks])
        except BrokenProcessPool as exc:
            raise _died(exc) from None

    def score(
        self, observations: Sequence[Observation], batch_size: int, scores: Sequence[str]
    ) -> ScoredBatch:
        """`score_observations` of every observation, in order, spread over the processes.
        RuntimeError if a process died (killed, out of memory) or could not load the model."""
        return self.submit(observations, batch_size, scores).result()

    def pids(self) -> list[int]:
        """The worker processes' ids (started on the first `submit`)."""
        return [p.pid for p in self._processes() if p.pid is not None]

    def _processes(self) -> list[multiprocessing.process.BaseProcess]:
        # The executor's own table: before Python 3.14 it has no public way to stop work in
        # flight (terminate_workers), and an interrupted run must not wait for its pieces.
        return list((getattr(self._executor, "_processes", None) or {}).values())

    def close(self) -> None:
        """Stop the processes at once; work still queued or in flight (a batch submitted and
        not collected, an interrupted run) is dropped."""
        for process in self._processes():
            process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class PendingScores:
    """A submitted batch's pieces; `result` waits for them and joins their rows in order."""

    def __init__(self, pieces: list[Future[ScoredBatch]]) -> None:
        self._pieces = pieces

    def result(self) -> ScoredBatch:
        """The batch's scores, as one process would give them. RuntimeError if a process
        died (killed, out of memory) or could not load the model."""
        try:
            return concatenate_scored([piece.result() for piece in self._pieces])
        except BrokenProcessPool as exc:
            raise _died(exc) from None


def _died(exc: BrokenProcessPool) -> RuntimeError:
    return RuntimeError(
        f"a scoring process died or could not start ({exc}); these images were not scored"
    )


__all__ = ["PIECES_PER_WORKER", "PendingScores", "ScoringPool"]
