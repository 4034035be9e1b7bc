"""Self-test of the stand-in upstream, driven directly with the official OpenAI SDK.

Needs no gateway: it proves the fixture the other tests rely on behaves like a provider.
"""

import time

import httpx
import openai
import pytest

from standin import StandIn, closed_port


@pytest.fixture
def standin():
    with StandIn("gemini", api_key="k-gemini", prefix="/v1beta/openai") as s:
        yield s


def client(s: StandIn, key: str = "k-gemini") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=s.url + "/v1beta/openai", max_retries=0, timeout=10)


def test_completion_and_recording(standin):
    r = client(standin).chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.model == "gemini-2.0-flash"
    assert r.choices[0].message.content == "Hello from gemini!"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 7, 18)
    [req] = standin.requests
    assert req.method == "POST"
    assert req.path == "/v1beta/openai/chat/completions"
    assert req.header("authorization") == "Bearer k-gemini"
    assert req.json()["messages"] == [{"role": "user", "content": "hi"}]
    assert standin.saw_value("k-gemini")
    assert not standin.saw_value("never-sent")


def test_wrong_key_is_401(standin):
    with pytest.raises(openai.AuthenticationError):
        client(standin, key="wrong").chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
    assert len(standin.requests) == 1


def test_path_outside_prefix_is_404(standin):
    r = httpx.post(standin.url + "/v1/chat/completions", json={}, headers={"Authorization": "Bearer k-gemini"})
    assert r.status_code == 404


def test_models(standin):
    ids = [m.id for m in client(standin).models.list()]
    assert "gpt-4o-mini" in ids
    assert standin.requests[0].path == "/v1beta/openai/models"


def test_stream_is_incremental_with_usage(standin):
    stream = client(standin).chat.completions.create(
        model="gemini-2.0-flash",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    times, text, usage = [], "", None
    for chunk in stream:
        times.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == "Hello from gemini!"
    assert usage is not None and usage.total_tokens == 18
    assert len(times) >= 6
    assert times[-1] - times[0] >= 0.2


def test_stream_without_usage_has_no_usage_chunk(standin):
    chunks = list(
        client(standin).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)


def test_raw_sse_ends_with_done(standin):
    lines = []
    with httpx.stream(
        "POST",
        standin.url + "/v1beta/openai/chat/completions",
        json={"model": "m", "messages": [], "stream": True},
        headers={"Authorization": "Bearer k-gemini"},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line:
                lines.append(line)
    assert lines[-1] == "data: [DONE]"
    assert all(l.startswith("data: ") for l in lines)


def test_no_key_no_prefix_echo():
    with StandIn("plain") as s:
        r = httpx.get(s.url + "/anything?x=1")
        assert r.json() == {"standin": "plain", "method": "GET", "path": "/anything?x=1"}


def test_hang_mode_never_answers():
    with StandIn("slow", mode="hang", hang_seconds=5) as s:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(s.url + "/x", timeout=0.3)
        assert len(s.requests) == 1


def test_closed_port_refuses():
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{closed_port()}/", timeout=2)
