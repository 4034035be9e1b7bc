#!/usr/bin/env python3
"""A tiny OpenAI-compatible upstream for the quick start: answers /v1/chat/completions
with a canned reply (streamed when asked) and shows which credential the gateway injected.
Usage: demo-upstream.py PORT"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        req = json.loads(body or b"{}")
        model = req.get("model", "demo")
        auth = self.headers.get("authorization", "")
        injected = "an injected key" if auth.startswith("Bearer sk-demo") else "no key"
        text = f"Hello from the demo upstream; the gateway sent {injected}, not your token"
        usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
        if req.get("stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for word in text.split(" "):
                chunk = {"object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": {"content": word + " "}}]}
                self._chunk(f"data: {json.dumps(chunk)}\n\n")
                time.sleep(0.05)
            final = {"object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage}
            self._chunk(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n")
            self._chunk("")
            return
        out = json.dumps({"object": "chat.completion", "model": model, "usage": usage,
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _chunk(self, s):
        data = s.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
