"""Server-sent-event streaming through the gateway: chunks arrive as the upstream sends them
(not buffered until the end), the usage chunk and [DONE] come through."""

import json
import time

import pytest

from conftest import KEYS, chat_body

# the stand-in sends 7 or 8 events 50 ms apart; a buffering proxy delivers them all at once
MIN_SPREAD = 0.15


def collect(stream):
    times, text, usage, models = [], "", None, set()
    for chunk in stream:
        times.append(time.monotonic())
        models.add(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    return times, text, usage, models


@pytest.mark.parametrize("service,model,provider", [
    ("gemini", "gemini-2.0-flash", "gemini"),
    ("total-ai", "gpt-4o-mini", "openai"),
    ("total-ai", "deepseek-chat", "deepseek"),
])
def test_sdk_stream_is_incremental(ai, service, model, provider):
    tok = ai.token()
    stream = ai.gw.openai(service, tok).chat.completions.create(
        **chat_body(model), stream=True, stream_options={"include_usage": True})
    times, text, usage, models = collect(stream)
    assert text == f"Hello from {provider}!"
    assert models == {model}
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 7, 18)
    assert len(times) >= 6
    assert times[-1] - times[0] >= MIN_SPREAD, f"chunks arrived together (spread {times[-1] - times[0]:.3f}s)"
    [req] = ai.up[provider].requests
    assert req.json()["stream"] is True
    assert req.json()["stream_options"] == {"include_usage": True}
    assert req.header("authorization") == f"Bearer {KEYS[provider]}"
    assert not ai.up[provider].saw_value(tok)


def test_stream_without_usage_option(ai):
    stream = ai.gw.openai("gemini", ai.token()).chat.completions.create(**chat_body(), stream=True)
    times, text, usage, _ = collect(stream)
    assert text == "Hello from gemini!"
    assert usage is None


def test_raw_sse_lines_and_done(ai):
    tok = ai.token()
    lines, times = [], []
    with ai.gw.http() as h:
        with h.stream("POST", ai.gw.url("gemini", "/chat/completions"),
                      json=chat_body(stream=True, stream_options={"include_usage": True}),
                      headers={"Authorization": f"Bearer {tok}"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert "content-length" not in r.headers
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    times.append(time.monotonic())
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines), lines
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert times[-1] - times[0] >= MIN_SPREAD


def test_first_chunk_before_upstream_finishes(ai):
    """Time to first byte is well below the whole stream's duration."""
    ai.up["gemini"].chunk_delay = 0.2  # ~1.6 s for the whole stream
    tok = ai.token()
    with ai.gw.http() as h:
        t0 = time.monotonic()
        with h.stream("POST", ai.gw.url("gemini", "/chat/completions"), json=chat_body(stream=True),
                      headers={"Authorization": f"Bearer {tok}"}) as r:
            it = r.iter_lines()
            first = next(line for line in it if line)
            t_first = time.monotonic() - t0
            for _ in it:
                pass
            t_all = time.monotonic() - t0
    assert first.startswith("data: ")
    assert t_all >= 1.0
    assert t_first < t_all / 2, f"first chunk after {t_first:.2f}s of {t_all:.2f}s"


def test_curl_no_buffer_stream(ai):
    tok = ai.token()
    r = ai.gw.curl("-N", "-H", f"Authorization: Bearer {tok}", "-H", "Content-Type: application/json",
                   "--data", json.dumps(chat_body("deepseek-chat", stream=True)),
                   ai.gw.url("total-ai", "/chat/completions"))
    assert r.status == 200, r.body
    text = r.body.decode()
    assert text.rstrip().endswith("data: [DONE]")
    assert text.count("data: ") >= 6
    assert ai.up["deepseek"].requests[0].path == "/v1/chat/completions"


def test_client_disconnect_mid_stream_does_not_break_gateway(ai):
    ai.up["gemini"].chunk_delay = 0.2
    tok = ai.token()
    with ai.gw.http() as h:
        with h.stream("POST", ai.gw.url("gemini", "/chat/completions"), json=chat_body(stream=True),
                      headers={"Authorization": f"Bearer {tok}"}) as r:
            next(line for line in r.iter_lines() if line)
        # closed early; the gateway keeps serving
    r = ai.gw.openai("gemini", ai.token()).chat.completions.create(**chat_body())
    assert r.choices[0].message.content == "Hello from gemini!"
