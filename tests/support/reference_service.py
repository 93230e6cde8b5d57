"""A stand-in for the course's reference service on loopback: it answers every spec-body PUT with only bn,
bt and a label_idx record (no ``label``, no probability), as the reference implementation does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY: dict[str, Any] = {"bn": "x", "bt": 0, "e": [{"n": "label_idx", "u": "/", "t": 0, "v": "3"}]}  # "left"


class ReferenceService:
    """``with ReferenceService(reply) as url:`` serves ``reply`` to every PUT at ``url``."""

    def __init__(self, reply: dict[str, Any] = REPLY) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                out = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def __enter__(self) -> str:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
