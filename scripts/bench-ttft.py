#!/usr/bin/env python3
"""Streaming time-to-first-token client for scripts/bench (Python standard library only).

Sends N streamed chat-completion requests ("stream": true) one after the other, each on a
fresh connection (HTTP/1.1, TLS for https://, "Connection: close"), and times the answer at
the socket-read level: every recv() is stamped when it returns, the body is de-chunked and
split into SSE events as bytes arrive, and an event's arrival time is the stamp of the read
that completed it.

Per request it records:
  ttft_ms      request written -> first "data:" event complete (the TLS handshake and TCP
               connect happen before the clock starts, so only the proxy's work on the request
               and the upstream's first chunk are in it);
  duration_ms  request written -> "data: [DONE]" event complete;
  chunks       completion events ("data:" lines other than [DONE]);
  batched      completion events that arrived less than pace/2 after the previous one (an
               event completed by the same read() as the previous one has gap 0). The upstream
               pauses `pace` after each event, so an unbuffered proxy shows 0;
  coalesced    completion events completed by the same read() as the previous one (the
               subset of `batched` where the proxy put two events into one write/TLS record).

It prints one JSON object (the summary, with "error" if any stream was incomplete) on stdout.

  bench-ttft.py URL [--host H] [--auth A] [--requests 20] [--chunks 50] [--pace-ms 10]
                    [--cafile F | --insecure] [--case 17 --name nginx]
"""
import argparse
import json
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit

BODY = json.dumps({"model": "gpt-4o-mini", "temperature": 0.7, "stream": True,
                   "messages": [{"role": "user", "content": "Count to fifty, one word a line."}]},
                  separators=(",", ":")).encode()


class Dechunker:
    """Incremental HTTP/1.1 chunked transfer decoding; `done` once the last chunk is read."""

    def __init__(self):
        self.buf = b""
        self.state, self.left, self.done = "size", 0, False

    def feed(self, data):
        self.buf += data
        out = []
        while not self.done:
            if self.state == "size":
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                self.left = int(self.buf[:i].split(b";")[0], 16)
                self.buf = self.buf[i + 2:]
                self.done = self.left == 0
                self.state = "data"
            elif self.state == "data":
                if not self.buf:
                    break
                take = self.buf[:self.left]
                out.append(take)
                self.buf = self.buf[len(take):]
                self.left -= len(take)
                if self.left == 0:
                    self.state = "crlf"
            else:
                if len(self.buf) < 2:
                    break
                self.buf = self.buf[2:]
                self.state = "size"
        return b"".join(out)


def one_request(url, host, auth, timeout, ctx):
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    sock = socket.create_connection((u.hostname, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if u.scheme == "https":
        sni = (host or u.hostname).split(":")[0]
        sock = ctx.wrap_socket(sock, server_hostname=sni)  # handshake happens here
    head = [f"POST {u.path or '/'} HTTP/1.1", f"Host: {host or u.netloc}",
            "Content-Type: application/json", "Accept: text/event-stream",
            f"Content-Length: {len(BODY)}", "Connection: close"]
    if auth:
        head.append(f"Authorization: {auth}")
    t0 = time.perf_counter()
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + BODY)
    raw, headers, status, dechunk, body = b"", None, None, None, b""
    events = []  # (arrival seconds since t0, event bytes)
    eof = seen_done = False
    while True:
        data = sock.recv(65536)
        now = time.perf_counter() - t0
        if not data:
            eof = True
            break
        if headers is None:
            raw += data
            i = raw.find(b"\r\n\r\n")
            if i < 0:
                continue
            lines = raw[:i].decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, v in
                       (l.split(":", 1) for l in lines[1:] if ":" in l)}
            data = raw[i + 4:]
            if "chunked" in headers.get("transfer-encoding", "").lower():
                dechunk = Dechunker()
        body += dechunk.feed(data) if dechunk else data
        body = body.replace(b"\r\n", b"\n")  # SSE allows CRLF line ends
        while True:
            i = body.find(b"\n\n")
            if i < 0:
                break
            ev, body = body[:i], body[i + 2:]
            if ev.strip():
                events.append((now, ev))
                seen_done = seen_done or ev.strip() == b"data: [DONE]"
        if dechunk and dechunk.done:
            break
        if seen_done and not dechunk:
            # A body not chunked (close-delimited or with a length): [DONE] ends the stream.
            break
    sock.close()
    return status, headers or {}, events, eof


def summarise(results, pace_ms, chunks, name, case):
    pct = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
    ok = [r for r in results if r["complete"]]
    out = {"case": case, "name": name, "kind": "ttft", "requests": len(results),
           "complete": len(ok), "pace_ms": pace_ms, "expected_chunks": chunks}
    if ok:
        ttft = [r["ttft_ms"] for r in ok]
        dur = [r["duration_ms"] for r in ok]
        out.update(ttft_p50_ms=round(pct(ttft, 50), 3), ttft_p99_ms=round(pct(ttft, 99), 3),
                   ttft_max_ms=round(max(ttft), 3),
                   duration_p50_ms=round(pct(dur, 50), 3), duration_max_ms=round(max(dur), 3),
                   batched_chunks=sum(r["batched"] for r in ok),
                   max_batched_in_one_stream=max(r["batched"] for r in ok),
                   coalesced_chunks=sum(r["coalesced"] for r in ok),
                   chunks_received=sum(r["chunks"] for r in ok))
    bad = [r for r in results if not r["complete"]]
    if bad:
        out["error"] = f"{len(bad)} of {len(results)} streams incomplete: {bad[0]['problem']}"
    out["streams"] = results
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url")
    ap.add_argument("--host", default="")
    ap.add_argument("--auth", default="")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--pace-ms", type=float, default=10.0)
    ap.add_argument("--cafile")
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--case", type=int, default=0)
    ap.add_argument("--name", default="")
    a = ap.parse_args()
    ctx = ssl.create_default_context(cafile=a.cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    if a.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    results = []
    for _ in range(a.requests):
        r = {"complete": False}
        try:
            status, headers, events, eof = one_request(a.url, a.host, a.auth, a.timeout, ctx)
        except (OSError, ValueError, IndexError) as e:
            r["problem"] = f"{type(e).__name__}: {e}"
            results.append(r)
            continue
        data = [(t, ev) for t, ev in events if ev.startswith(b"data:")]
        chunks = [(t, ev) for t, ev in data if ev.strip() != b"data: [DONE]"]
        done = [t for t, ev in data if ev.strip() == b"data: [DONE]"]
        gaps = [b[0] - a_[0] for a_, b in zip(chunks, chunks[1:])]
        r.update(status=status, chunks=len(chunks),
                 batched=sum(1 for g in gaps if g * 1000 < a.pace_ms / 2),
                 coalesced=sum(1 for g in gaps if g == 0),
                 content_type=headers.get("content-type", ""))
        if data:
            r["ttft_ms"] = round(data[0][0] * 1000, 3)
        if done:
            r["duration_ms"] = round(done[0] * 1000, 3)
        r["arrivals_ms"] = [round(t * 1000, 2) for t, _ in chunks]
        if status != 200:
            r["problem"] = f"HTTP {status}"
        elif len(chunks) < a.chunks:
            r["problem"] = f"{len(chunks)} of {a.chunks} chunks"
        elif not done:
            r["problem"] = "no data: [DONE]" + (" (connection closed)" if eof else "")
        else:
            r["complete"] = True
        results.append(r)
    s = summarise(results, a.pace_ms, a.chunks, a.name, a.case)
    print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
