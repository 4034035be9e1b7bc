"""A small OpenAI-compatible upstream that stands in for Gemini, OpenAI, DeepSeek or any
plain HTTP API in the end-to-end tests.

Plain HTTP/1.1 on 127.0.0.1, an ephemeral port, one thread per connection (or HTTP/1.1 over
TLS when ``ssl_context`` is given: a server-side ``ssl.SSLContext`` with its certificate loaded;
``url`` is then ``https://<tls_host>:<port>``). Every request is
recorded (method, path, headers, body) before it is answered so tests can assert what the
gateway forwarded (and what it did NOT forward, such as the caller's access token).

Routes (all below ``prefix``; a path outside the prefix gets 404):
  POST {prefix}.../chat/completions  a chat completion; SSE when the body has "stream": true
  GET  {prefix}.../models            a model list
  anything else                      200 JSON echo {"standin", "method", "path"}

When ``api_key`` is set, a request whose ``Authorization`` is not ``Bearer <api_key>`` gets
401 (as the real providers do). Modes: "normal", "hang" (accept, read the request, never
answer until stopped or ``hang_seconds`` pass) for 504 tests, and for resilience tests:
"500" (always 500), "429" (always 429), "close" (read the request, close the connection
without answering), "slow" (wait ``slow_seconds`` before the response headers, then answer
normally). ``fail_first`` makes the first N requests fail with ``fail_status`` (default 500)
before the mode applies; ``close_first`` makes the first N requests be read in full and
their connection closed without an answer (as "close" does) before the mode applies. ``request_delay`` holds every answer that long (to keep requests in
flight for least-busy tests).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


@dataclass
class Recorded:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_values(self) -> list[str]:
        return [v for _, v in self.headers]

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class StandIn:
    def __init__(
        self,
        name: str,
        api_key: str | None = None,
        prefix: str = "",
        chunk_delay: float = 0.05,
        mode: str = "normal",
        hang_seconds: float = 30.0,
        ssl_context: Any = None,
        tls_host: str = "127.0.0.1",
        fail_first: int = 0,
        fail_status: int = 500,
        slow_seconds: float = 2.0,
        request_delay: float = 0.0,
        close_first: int = 0,
    ):
        self.name = name
        self.api_key = api_key
        self.prefix = prefix.rstrip("/")
        self.chunk_delay = chunk_delay
        self.mode = mode
        self.hang_seconds = hang_seconds
        self.ssl_context = ssl_context
        self.tls_host = tls_host
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.slow_seconds = slow_seconds
        self.request_delay = request_delay
        self.close_first = close_first
        self._closed = 0
        self._failed = 0
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "StandIn":
        standin = self

        class Handler(_Handler):
            owner = standin

        server_cls = ThreadingHTTPServer
        if self.ssl_context is not None:
            ctx = self.ssl_context

            class _TLSServer(ThreadingHTTPServer):
                def get_request(self):
                    sock, addr = self.socket.accept()
                    # handshake lazily, in the connection's thread (a failed handshake then
                    # never blocks or breaks the accept loop)
                    return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

                def handle_error(self, request, client_address):
                    pass  # failed handshakes (a client rejecting our certificate) are expected

            server_cls = _TLSServer
        self._server = server_cls(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "StandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stand-in not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        if self.ssl_context is not None:
            return f"https://{self.tls_host}:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    # -- recording -------------------------------------------------------------------------
    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, r: Recorded) -> None:
        with self._lock:
            self._requests.append(r)

    def saw_value(self, needle: str) -> bool:
        """True when any recorded request carried ``needle`` in any header value or body."""
        for r in self.requests:
            if any(needle in v for v in r.header_values()) or needle.encode() in r.body:
                return True
        return False


class _Handler(BaseHTTPRequestHandler):
    owner: StandIn
    protocol_version = "HTTP/1.1"
    server_version = "standin/1"
    # Head and body are separate writes: without TCP_NODELAY every answer on a reused
    # connection waited ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # keep pytest output clean
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until blank line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Standin", self.owner.name)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    # -- dispatch --------------------------------------------------------------------------
    def _handle(self) -> None:
        owner = self.owner
        body = self._read_body()
        owner._record(Recorded(self.command, self.path, list(self.headers.items()), body))

        if owner.mode == "hang":
            owner._stopping.wait(owner.hang_seconds)
            self.close_connection = True
            return
        with owner._lock:
            close_now = owner._closed < owner.close_first
            if close_now:
                owner._closed += 1
        if close_now:
            self.close_connection = True
            return
        with owner._lock:
            fail_now = owner._failed < owner.fail_first
            if fail_now:
                owner._failed += 1
        if fail_now:
            return self._error(owner.fail_status, f"{owner.name}: failing on purpose", "standin_failure")
        if owner.mode == "500":
            return self._error(500, f"{owner.name}: internal error on purpose", "standin_failure")
        if owner.mode == "429":
            return self._error(429, f"{owner.name}: rate limited on purpose", "rate_limit_exceeded")
        if owner.mode == "close":
            self.close_connection = True
            return
        if owner.mode == "slow":
            owner._stopping.wait(owner.slow_seconds)
        if owner.request_delay:
            owner._stopping.wait(owner.request_delay)

        path = self.path.split("?", 1)[0]
        if owner.prefix and not (path == owner.prefix or path.startswith(owner.prefix + "/")):
            return self._error(404, f"{owner.name}: no route for {path}", "not_found")
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            return self._error(401, f"{owner.name}: incorrect API key provided", "invalid_api_key")

        if self.command == "POST" and path.endswith("/chat/completions"):
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                return self._error(400, "body is not JSON", "invalid_json")
            if req.get("stream"):
                return self._stream(req)
            return self._json(200, self._completion(req))
        if self.command == "GET" and path.endswith("/models"):
            return self._json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 1700000000, "owned_by": owner.name}
                        for m in ("gpt-4o-mini", "deepseek-chat", "gemini-2.0-flash")
                    ],
                },
            )
        return self._json(200, {"standin": owner.name, "method": self.command, "path": self.path})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    # -- completions -----------------------------------------------------------------------
    def _content(self) -> list[str]:
        return ["Hello", " from", f" {self.owner.name}", "!"]

    def _completion(self, req: dict) -> dict:
        return {
            "id": f"chatcmpl-{self.owner.name}-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", "unknown"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self._content())},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": dict(USAGE),
            "system_fingerprint": None,
        }

    def _stream(self, req: dict) -> None:
        model = req.get("model", "unknown")
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices=True) -> dict:
            c = {
                "id": f"chatcmpl-{self.owner.name}-1",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
            }
            if include_usage:
                c["usage"] = usage
            return c

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in self._content()]
        events.append(chunk({}, finish="stop"))
        if include_usage:
            events.append(chunk({}, usage=dict(USAGE), choices=False))

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Standin", self.owner.name)
        self.end_headers()
        try:
            for i, ev in enumerate(events):
                if i:
                    time.sleep(self.owner.chunk_delay)
                self._chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
            time.sleep(self.owner.chunk_delay)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def closed_port() -> int:
    """A local port that nothing listens on (for upstream-down tests)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
