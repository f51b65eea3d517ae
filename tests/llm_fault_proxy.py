"""A fault-injecting HTTP proxy in front of a real OpenAI-compatible server (llama.cpp's), for the
LLM fault tests: each request takes the next scripted fault, or passes through when none is left.

Faults: `Fail(status, retry_after)` answers that status at once; `Hang()` reads the request and
never answers; `CutStream(after_events)` forwards a streamed answer's first events, then stalls
with the connection open, as an endpoint that dies mid-answer does.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@dataclass(frozen=True)
class Fail:
    status: int
    retry_after: str | None = None


@dataclass(frozen=True)
class Hang:
    pass


@dataclass(frozen=True)
class CutStream:
    after_events: int


Fault = Fail | Hang | CutStream


class LLMFaultProxy:
    """`with LLMFaultProxy(upstream) as proxy:` serves on `proxy.base_url` (an OpenAI base URL)."""

    def __init__(self, upstream_base_url: str):
        self.upstream = upstream_base_url.rstrip("/")
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests = 0  # chat requests that reached the proxy
        self.passed = 0  # of those, answered by the upstream server
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes: streams pass as they come

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._next()
                if isinstance(fault, Fail):
                    payload = json.dumps({"error": {"message": f"injected {fault.status}", "type": "injected"}}).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if isinstance(fault, Hang):
                    proxy._stop.wait(120)
                    return
                try:
                    self._forward(body, fault.after_events if isinstance(fault, CutStream) else None)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up on the answer (its timeout, or it had read enough)

            def _forward(self, body: bytes, cut_after: int | None) -> None:
                with httpx.stream(
                    "POST",
                    f"{proxy.upstream}{self.path.removeprefix('/v1')}",
                    content=body,
                    headers={"Content-Type": "application/json"},
                    timeout=120,
                ) as response:
                    self.send_response(response.status_code)
                    self.send_header("Content-Type", response.headers.get("content-type", "application/json"))
                    self.end_headers()
                    events = 0
                    for line in response.iter_lines():
                        if cut_after is not None and line.startswith("data:"):
                            if events == cut_after:
                                self.wfile.flush()
                                proxy._stop.wait(120)  # stalled mid-answer, connection still open
                                return
                            events += 1
                        self.wfile.write(line.encode() + b"\n")
                        self.wfile.flush()
                with proxy._lock:
                    proxy.passed += 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def _next(self) -> Fault | None:
        with self._lock:
            self.requests += 1
            return self._faults.popleft() if self._faults else None

    def __enter__(self) -> LLMFaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
