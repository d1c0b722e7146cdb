"""Mutated image files (tests/fuzzing.py): each decodes or fails with our one error naming
the file, within seconds, through the decoding workers and through POST /score.

DEEPLENSE_FUZZ_CASES sets the number of cases (default 300; `make fuzz` runs thousands).
"""

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.decode_pool import DecodePool
from app.imaging import Upload, prepare
from deeplense.instrument import STUDY_INSTRUMENT
from tests.app.conftest import make_settings
from tests.fuzzing import cases

CASES = int(os.environ.get("DEEPLENSE_FUZZ_CASES", "300"))
SEED = int(os.environ.get("DEEPLENSE_FUZZ_SEED", "0"))
FILES_PER_REQUEST = 8


def test_mutated_files_decode_or_fail_cleanly(tmp_path: Path) -> None:
    # In the service's workers: a hang or a crash shows as a timeout or a dead worker,
    # reported here with the case's name (python -m tests.fuzzing N SEED OUT rebuilds it).
    pool = DecodePool(make_settings(tmp_path, decode_timeout_s=5.0))
    pool.start()
    failures = []
    try:
        for name, data in cases(CASES, SEED):
            started = time.monotonic()
            decoded = pool.decode_all([Upload(name, data)], 4096 * 4096)[0]
            prepared = prepare(name, decoded, 32, STUDY_INSTRUMENT)  # as the service does
            took = time.monotonic() - started
            error = prepared.error or ""
            if (
                took > 5.0
                or (prepared.error is not None and not error.startswith(f"{name}: "))
                or "decoding took longer" in error
                or "the decoder failed" in error
            ):
                failures.append(f"{name}: {took:.1f} s: {error[:200]}")
    finally:
        pool.close()
    assert not failures, failures


def test_mutated_uploads_get_a_200_or_a_4xx_with_detail(client: TestClient) -> None:
    batch: list[tuple[str, tuple[str, bytes, str]]] = []
    n = max(CASES // 3, FILES_PER_REQUEST)
    for i, (name, data) in enumerate(cases(n, SEED + 1)):
        batch.append(("files", (name, data, "application/octet-stream")))
        if len(batch) < FILES_PER_REQUEST and i < n - 1:
            continue
        started = time.monotonic()
        response = client.post("/score", files=batch, params={"include_images": "false"})
        assert time.monotonic() - started < 10, [b[1][0] for b in batch]
        assert response.status_code in (200, 413, 422), response.text[:500]
        if response.status_code == 200:
            results = response.json()["results"]
            assert [r["filename"] for r in results] == [b[1][0] for b in batch]
        else:
            assert response.json()["detail"]
        batch = []


@pytest.mark.parametrize("seed", [0, 1])
def test_the_fuzzer_is_deterministic(seed: int) -> None:
    assert list(cases(20, seed)) == list(cases(20, seed))
