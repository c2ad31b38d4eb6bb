"""A real HTTP endpoint on 127.0.0.1 that records what alert channels POST: the receiving end of webhook tests."""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetpulse.broker.netutil import free_port

__all__ = ["Received", "Receiver"]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records every POST; it can answer errors, or be down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.answers: deque[int] = deque()  # statuses for the next requests; 200 once empty
        self.fail_when: Callable[[Any], bool] | None = None  # 503 for the bodies it returns True for
        self._requests: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._answer(body)
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver._requests.append(Received(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        # A short poll interval keeps shutdown() (and each test's teardown) from waiting half a second.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def _answer(self, body: bytes) -> int:
        with self._lock:
            if self.answers:
                return self.answers.popleft()
        if self.fail_when is not None and self.fail_when(json.loads(body)):
            return 503
        return 200

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def delivered(self) -> list[Any]:
        return [request.json() for request in self.requests if 200 <= request.status < 300]
