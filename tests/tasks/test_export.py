"""`tailor export` fetches llama.cpp's converter sdist from the package index's simple API, never through pip (which
would install and run the sdist's unpinned build backend), and keeps it only when its sha256 is the pinned one."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.core.errors import UserError
from tasks.release.export import index_download

SDIST = b"not really a tarball, but bytes with a known digest"


class Index(BaseHTTPRequestHandler):
    """A PEP 691 index of one project, `demo`, with one file, on 127.0.0.1."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/simple/demo/":
            body = json.dumps({"meta": {"api-version": "1.0"}, "name": "demo", "files": [
                {"filename": "demo-1.0.tar.gz", "url": "../../files/demo-1.0.tar.gz", "hashes": {}}]}).encode()
        elif self.path == "/files/demo-1.0.tar.gz":
            body = SDIST
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/simple"
    monkeypatch.setenv("PIP_INDEX_URL", url)  # pip's own variable: `pip config list` shows it as :env:.index-url
    yield url
    server.shutdown()


def test_the_sdist_is_fetched_from_the_configured_index_and_checked(index: str, tmp_path: Path) -> None:
    pinned = hashlib.sha256(SDIST).hexdigest()
    got = index_download("demo", "demo-1.0.tar.gz", pinned, tmp_path, "advice")
    assert got == tmp_path / "demo-1.0.tar.gz" and got.read_bytes() == SDIST
    assert index_download("demo", "demo-1.0.tar.gz", pinned, tmp_path / "x", "advice").read_bytes() == SDIST


def test_a_file_that_is_not_the_pinned_one_is_removed(index: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not the pinned 0{64}, so it was removed"):
        index_download("demo", "demo-1.0.tar.gz", "0" * 64, tmp_path, "advice")
    assert list(tmp_path.iterdir()) == []


def test_a_file_the_index_does_not_list_or_an_unreachable_index_is_one_message(
        index: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=f"the package index {index} lists no demo-2.0.tar.gz; advice"):
        index_download("demo", "demo-2.0.tar.gz", "0" * 64, tmp_path, "advice")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: nothing listens
    with pytest.raises(UserError, match="could not fetch demo-1.0.tar.gz from the package index "
                                        "http://127.0.0.1:9/simple .*; advice"):
        index_download("demo", "demo-1.0.tar.gz", "0" * 64, tmp_path, "advice")
