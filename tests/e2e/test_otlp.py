"""OpenTelemetry export (--otlp-endpoint): a completion through the gateway reaches a small
OTLP/HTTP receiver as a log record and a SERVER span with HTTP, postern.* and GenAI attributes;
a collector that is down never slows or fails requests; a caller's W3C traceparent is continued
upstream and in the span, a malformed one is dropped."""

import os
import re
import socket
import statistics
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest, ExportLogsServiceResponse)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from conftest import setup_ai

MODEL = "gemini-2.0-flash"
SIGNALS = {
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
}


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1 keeping what it was sent, decoded."""

    def __init__(self):
        self.logs: list = []  # (resource attrs, LogRecord)
        self.spans: list = []  # (resource attrs, Span)
        self.posts: list = []  # (path, headers)
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                kinds = SIGNALS.get(self.path)
                if kinds is None:
                    self.send_error(404)
                    return
                req = kinds[0].FromString(body)
                collector.add(self.path, dict(self.headers.items()), req)
                out = kinds[1]().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, path, headers, req):
        with self.lock:
            self.posts.append((path, {k.lower(): v for k, v in headers.items()}))
            if path == "/v1/logs":
                for rl in req.resource_logs:
                    res = attrs(rl.resource.attributes)
                    self.logs += [(res, r) for sl in rl.scope_logs for r in sl.log_records]
            else:
                for rs in req.resource_spans:
                    res = attrs(rs.resource.attributes)
                    self.spans += [(res, s) for ss in rs.scope_spans for s in ss.spans]

    def wait_for(self, pred, what: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [x for x in self.logs + self.spans if pred(x)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"collector got no {what} in {timeout}s: {len(self.logs)} logs, {len(self.spans)} spans")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat(ai, tok):
    return ai.gw.openai("gemini", tok).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi"}])


def test_completion_exported_as_log_and_span(start_gateway):
    with Collector() as col, ExitStack() as stack:
        gw = start_gateway(extra_args=["--otlp-endpoint", col.url, "--otlp-header", "x-collector-key=k3y",
                                       "--otlp-service-name", "postern-e2e"])
        ai = setup_ai(gw, stack)
        r = chat(ai, ai.token())
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 7)

        def is_completion(x):
            return attrs(x[1].attributes).get("gen_ai.request.model") == MODEL

        [(res, log)] = col.wait_for(lambda x: is_completion(x) and not isinstance(x[1], Span), "log")
        [(span_res, span)] = col.wait_for(lambda x: is_completion(x) and isinstance(x[1], Span), "span")

    for a in (attrs(log.attributes), attrs(span.attributes)):
        assert a["http.request.method"] == "POST"
        assert a["http.response.status_code"] == 200
        assert a["url.path"] == "/chat/completions"
        assert a["server.address"].startswith("gemini.")
        assert a["postern.user"] == "app"
        assert a["postern.service"] == "gemini"
        assert a["postern.decision"] == "ALLOW"
        assert a["postern.reason"]
        assert a["gen_ai.system"] == "gemini"
        assert a["gen_ai.request.model"] == MODEL
        assert a["gen_ai.response.model"] == MODEL
        assert a["gen_ai.usage.input_tokens"] == 11
        assert a["gen_ai.usage.output_tokens"] == 7
    for r in (res, span_res):
        assert r["service.name"] == "postern-e2e"

    assert log.severity_text == "INFO"
    assert '"usage"' in log.body.string_value and '"requestId"' in log.body.string_value
    assert span.name == "POST gemini"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.status.code != Status.STATUS_CODE_ERROR
    assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    assert len(span.trace_id) == 16 and len(span.span_id) == 8
    assert (log.trace_id, log.span_id) == (span.trace_id, span.span_id)

    paths = {p for p, _ in col.posts}
    assert paths == {"/v1/logs", "/v1/traces"}
    for _, h in col.posts:
        assert h["content-type"] == "application/x-protobuf"
        assert h["x-collector-key"] == "k3y"


def test_denial_exported_and_flushed_on_shutdown(start_gateway):
    with Collector() as col, ExitStack() as stack:
        gw = start_gateway(extra_args=["--otlp-endpoint", col.url])
        setup_ai(gw, stack)
        with gw.http() as h:
            r = h.post(gw.url("gemini", "/chat/completions"), json={"model": MODEL, "messages": []})
        assert r.status_code == 401, r.text
        gw.stop()  # before the 1 s batch timer: the shutdown flush must deliver it
        [(res, log)] = [x for x in col.wait_for(lambda x: attrs(x[1].attributes).get("http.response.status_code") == 401
                                                 and not isinstance(x[1], Span), "401 log", timeout=2)]
    assert res["service.name"] == "posternd"
    assert log.severity_text == "WARN"
    assert "postern.user" not in attrs(log.attributes)


def timed(gw, tok, n=15) -> list[float]:
    times = []
    with gw.http() as h:
        for _ in range(n):
            t = time.monotonic()
            r = h.post(gw.url("gemini", "/chat/completions"), headers={"Authorization": f"Bearer {tok}"},
                       json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
            times.append(time.monotonic() - t)
            assert r.status_code == 200, r.text
    return times


def test_collector_down_never_slows_requests(start_gateway):
    with ExitStack() as stack:
        base = start_gateway()
        base_ai = setup_ai(base, stack)
        baseline = statistics.median(timed(base, base_ai.token()))

        gw = start_gateway(extra_args=["--otlp-endpoint", f"http://127.0.0.1:{closed_port()}"])
        ai = setup_ai(gw, stack)
        tok = ai.token()
        down = timed(gw, tok)
        time.sleep(1.5)  # let a batch fail
        down += timed(gw, tok)
        assert statistics.median(down) < baseline * 3 + 0.05, (baseline, down)
        assert max(down) < 2.0, down
        t = time.monotonic()
        gw.stop()
        assert time.monotonic() - t < 5.0, "shutdown waited too long on a dead collector"

    err = gw.stderr()
    otlp_lines = [line for line in err.splitlines() if "OTLP" in line]
    assert any("failed" in line for line in otlp_lines), err[-3000:]
    assert not [line for line in otlp_lines if re.search(r"\bERROR\b", line)], otlp_lines
    assert sum("OTLP export failed" in line for line in otlp_lines) <= 1, otlp_lines


def test_bad_otlp_flags_are_refused(start_gateway, tmp_path):
    gw = start_gateway()
    r = gw.run("posternd", "serve", "--data-dir", str(gw.data_dir), "--otlp-endpoint", "collector:4318",
               check=False, timeout=15)
    assert r.returncode != 0 and "OTLP endpoint" in r.stderr, r.stderr
    r = gw.run("posternd", "serve", "--data-dir", str(gw.data_dir), "--otlp-endpoint", "http://c:4318",
               "--otlp-header", "no-equals-sign", check=False, timeout=15)
    assert r.returncode != 0 and "OTLP header" in r.stderr, r.stderr


# W3C Trace Context: a caller's traceparent is continued upstream and in the exported span.
TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def post_chat(gw, tok, headers: dict) -> str:
    """POSTs a completion with extra headers; returns the request id."""
    with gw.http() as h:
        r = h.post(gw.url("gemini", "/chat/completions"),
                   headers={"Authorization": f"Bearer {tok}", **headers},
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def upstream_request(ai, marker: str):
    [req] = [r for r in ai.up["gemini"].requests if r.header("x-test-marker") == marker]
    return req


def span_of(col, request_id: str) -> Span:
    [(_, span)] = col.wait_for(lambda x: isinstance(x[1], Span)
                               and attrs(x[1].attributes).get("postern.request_id") == request_id,
                               f"span of {request_id}")
    return span


def test_incoming_traceparent_is_continued_upstream_and_in_the_span(start_gateway):
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    state = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    with Collector() as col, ExitStack() as stack:
        gw = start_gateway(extra_args=["--otlp-endpoint", col.url])
        ai = setup_ai(gw, stack)
        rid = post_chat(gw, ai.token(), {"traceparent": f"00-{trace_id}-{caller_span}-01",
                                         "tracestate": state, "x-test-marker": "continued"})
        up = upstream_request(ai, "continued")
        span = span_of(col, rid)
        [(_, log)] = col.wait_for(lambda x: not isinstance(x[1], Span)
                                  and attrs(x[1].attributes).get("postern.request_id") == rid, "log")

    sent = TRACEPARENT_RE.match(up.header("traceparent") or "")
    assert sent, f"upstream got traceparent {up.header('traceparent')!r}"
    assert sent.group(1) == trace_id, "the upstream continues the caller's trace"
    assert sent.group(2) != caller_span, "the gateway's span is the upstream's parent, not the caller's"
    assert sent.group(3) == "01"
    assert up.header("tracestate") == state
    assert sum(k.lower() == "traceparent" for k, _ in up.headers) == 1

    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id.hex() == caller_span
    assert span.span_id.hex() == sent.group(2), "the exported span is the one the upstream saw as parent"
    assert span.trace_state == state
    assert (log.trace_id, log.span_id) == (span.trace_id, span.span_id)


BAD_TRACEPARENTS = [
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # uppercase hex
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 with more
    "garbage",
]


def test_malformed_or_missing_traceparent_starts_a_new_trace_and_is_not_passed_on(start_gateway):
    with Collector() as col, ExitStack() as stack:
        gw = start_gateway(extra_args=["--otlp-endpoint", col.url])
        ai = setup_ai(gw, stack)
        tok = ai.token()
        cases = [(f"bad-{i}", {"traceparent": v, "tracestate": "congo=t61rcWkgMzE"})
                 for i, v in enumerate(BAD_TRACEPARENTS)]
        cases.append(("absent", {}))
        cases.append(("twice", None))
        seen = {}
        for marker, headers in cases:
            if headers is None:  # two valid traceparent headers: ambiguous, so ignored
                with gw.http() as h:
                    r = h.post(gw.url("gemini", "/chat/completions"),
                               headers=[("authorization", f"Bearer {tok}"), ("x-test-marker", marker),
                                        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                                        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
                               json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200, r.text
                rid = r.headers["x-request-id"]
            else:
                rid = post_chat(gw, tok, {**headers, "x-test-marker": marker})
            seen[marker] = (upstream_request(ai, marker), span_of(col, rid))

    for marker, (up, span) in seen.items():
        assert up.header("traceparent") is None, f"{marker}: upstream got {up.header('traceparent')!r}"
        assert up.header("tracestate") is None, f"{marker}: upstream got {up.header('tracestate')!r}"
        assert span.parent_span_id == b"", f"{marker}: span has a parent"
        assert span.trace_state == ""
        assert len(span.trace_id) == 16 and span.trace_id != bytes(16)
        assert span.trace_id.hex() not in ("4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c")


def test_without_export_the_callers_trace_passes_through(start_gateway):
    """No span is recorded without --otlp-endpoint: the upstream's parent is the caller's span
    (never one no backend has), and a malformed traceparent is still dropped."""
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    with ExitStack() as stack:
        gw = start_gateway()
        ai = setup_ai(gw, stack)
        tok = ai.token()
        post_chat(gw, tok, {"traceparent": f"00-{trace_id}-{caller_span}-03", "x-test-marker": "plain"})
        post_chat(gw, tok, {"traceparent": f"00-{trace_id.upper()}-{caller_span}-01", "x-test-marker": "bad"})
        assert upstream_request(ai, "plain").header("traceparent") == f"00-{trace_id}-{caller_span}-01"
        assert upstream_request(ai, "bad").header("traceparent") is None
