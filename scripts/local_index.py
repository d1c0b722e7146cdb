"""Serve a folder of wheels as a PEP 503 simple index on the loopback address, so a `docker
build --network host` installs exactly the files this host's pip chose (`make docker-test`).

    python scripts/local_index.py WHEEL_DIR      # prints the index URL, then serves until killed

Writes WHEEL_DIR/simple/<project>/index.html (one link per file) and serves WHEEL_DIR on
127.0.0.1 at a free port; the first line of output is the index URL (`.../simple/`).
"""

import argparse
import functools
import html
import re
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def project_name(filename: str) -> str:
    """The PEP 503 normalised project of a wheel or sdist file name."""
    stem = re.split(r"-\d", filename, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", stem).lower()


def write_index(folder: Path) -> int:
    """Write simple/<project>/index.html for every file in `folder`; returns the file count."""
    files = sorted(p for p in folder.iterdir() if p.suffix in {".whl", ".gz", ".zip"})
    projects: dict[str, list[str]] = {}
    for path in files:
        projects.setdefault(project_name(path.name), []).append(path.name)
    for project, names in projects.items():
        page = folder / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../{html.escape(n)}">{html.escape(n)}</a>\n' for n in names)
        page.write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    return len(files)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of .whl files")
    args = parser.parse_args()
    count = write_index(args.folder)
    handler = functools.partial(QuietHandler, directory=str(args.folder))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        print(f"http://127.0.0.1:{server.server_address[1]}/simple/", flush=True)
        print(f"{count} files", file=sys.stderr, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
