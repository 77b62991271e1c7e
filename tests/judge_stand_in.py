"""A deterministic stand-in for an LLM judge behind an OpenAI-compatible API, served on 127.0.0.1 by a thread of
the test process: it prefers the answer that shares more words with the reference (T when they share as many), or,
`biased`, always answers A (the position bias a judge in both orders must cancel). With `key`, it answers 401 to a
request without that bearer token."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PARTS = re.compile(r"Reference answer:\n(.*)\n\nAnswer A:\n(.*)\n\nAnswer B:\n(.*)\n\nWhich answer", re.S)


def verdict(prompt: str) -> str:
    reference, first, second = (set(part.lower().split()) for part in PARTS.search(prompt).groups())
    a, b = len(reference & first), len(reference & second)
    return "A" if a > b else "B" if b > a else "T"


@contextmanager
def stand_in_judge(biased: bool = False, key: str | None = None, received: list[str] | None = None) -> Iterator[str]:
    """The stand-in's base URL while the block runs; `received` collects the prompts of the requests it got."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if received is not None:
                received.append(body["messages"][0]["content"])
            if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
                self.send_response(401)
                self.end_headers()
                return
            prompt = body["messages"][0]["content"]
            answer = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                           "content": "A" if biased else verdict(prompt)}}]}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
