"""An overload sent to a real server with room for one request at a time (issue 20, "Done
when"; the cost budget's own 503s are tested in test_admission.py): the excess gets prompt
503s with Retry-After, no admitted request gets a 504, the server's CPU goes idle once the
answers are out, and its resident size comes back."""

import os
import threading
from pathlib import Path

import httpx

from tests.app.conftest import image
from tests.app.serve_fixture import run_server_process
from tests.encode import npy_bytes

CLIENTS = 12
FILES = 4


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_an_overload_is_shed_promptly_and_the_server_recovers(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    settings = {
        # One request at a time: a body over the in-flight cap is admitted only alone (a
        # tiny cost budget no longer does this: a request costlier than it gets 413).
        "DEEPLENSE_MAX_INFLIGHT_BYTES": "1",
        "DEEPLENSE_ADMISSION_WAIT_S": "0",
        "DEEPLENSE_DEFAULT_MODEL": "lensfit",
    }
    files = [("files", (f"{i}.npy", npy_bytes(image(i)))) for i in range(FILES)]
    with run_server_process(tiny_checkpoints, tmp_path / "log", settings=settings) as (url, proc):
        with httpx.Client(timeout=60) as http:
            assert http.post(f"{url}/score", files=files).status_code == 200  # warm
        before = rss_bytes(proc.pid)
        answers: list[httpx.Response] = []
        start = threading.Barrier(CLIENTS)

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                start.wait()
                for _ in range(3):
                    answers.append(http.post(f"{url}/score", files=files))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) == {200, 503}, statuses  # some served, the rest shed, no 504
        shed = [r for r in answers if r.status_code == 503]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in shed)
        assert all("overloaded" in r.json()["detail"] for r in shed)
        # Idle once answered: under a tenth of a core over two seconds (work nobody
        # waits for would keep a core busy); then the resident size is back near its base.
        used = cpu_seconds(proc.pid)
        threading.Event().wait(2.0)
        assert cpu_seconds(proc.pid) - used < 0.2
        assert rss_bytes(proc.pid) < 1.1 * before
        assert httpx.get(f"{url}/ready").status_code == 200
