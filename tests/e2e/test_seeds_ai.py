"""gemini.yaml and total-ai.yaml: key injection, path prefixes, routing by the body's model,
and the caller's token never reaching a provider. Driven with the official OpenAI SDK."""

import json

import pytest

from conftest import KEYS, PREFIX, SEED_RESOURCES, chat_body, seed_path, with_upstreams


def test_seed_files_applied_unchanged(ai):
    for res in SEED_RESOURCES:
        assert f"{res} created" in ai.seed_apply.stdout, ai.seed_apply.stdout


def test_gemini_completion_injects_key_and_prefix(ai):
    tok = ai.token()
    r = ai.gw.openai("gemini", tok).chat.completions.create(
        model="gemini-2.0-flash", messages=[{"role": "user", "content": "Say hi"}], temperature=0.2)
    assert r.model == "gemini-2.0-flash"
    assert r.choices[0].message.content == "Hello from gemini!"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 7, 18)

    [req] = ai.up["gemini"].requests
    assert req.method == "POST"
    assert req.path == "/v1beta/openai/chat/completions"
    assert req.header("authorization") == f"Bearer {KEYS['gemini']}"
    body = req.json()
    assert body["model"] == "gemini-2.0-flash"
    assert body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert body["temperature"] == 0.2
    # the caller's access token never reaches the upstream, in any header or the body
    assert not ai.up["gemini"].saw_value(tok)
    for other in ("openai", "deepseek", "my-api"):
        assert ai.up[other].requests == []


def test_gemini_models_list(ai):
    tok = ai.token()
    ids = [m.id for m in ai.gw.openai("gemini", tok).models.list()]
    assert "gemini-2.0-flash" in ids
    [req] = ai.up["gemini"].requests
    assert (req.method, req.path) == ("GET", "/v1beta/openai/models")
    assert req.header("authorization") == f"Bearer {KEYS['gemini']}"
    assert not ai.up["gemini"].saw_value(tok)


def test_gemini_query_string_preserved(ai):
    tok = ai.token()
    with ai.gw.http() as h:
        r = h.get(ai.gw.url("gemini", "/models?page_size=5&x=a%20b"), headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200, r.text
    assert ai.up["gemini"].requests[0].path == "/v1beta/openai/models?page_size=5&x=a%20b"


@pytest.mark.parametrize(
    "model,provider",
    [("gpt-4o-mini", "openai"), ("deepseek-chat", "deepseek"), ("gemini-2.0-flash", "gemini"),
     ("gpt-4o", "gemini"), ("anything-else", "gemini")],
)
def test_total_ai_routes_by_model(ai, model, provider):
    tok = ai.token("client_secret_basic")
    r = ai.gw.openai("total-ai", tok).chat.completions.create(**chat_body(model))
    assert r.model == model
    assert r.choices[0].message.content == f"Hello from {provider}!"
    [req] = ai.up[provider].requests
    assert req.path == f"{PREFIX[provider]}/chat/completions"
    assert req.header("authorization") == f"Bearer {KEYS[provider]}"
    assert req.json()["model"] == model
    for name, s in ai.up.items():
        if name != provider:
            assert s.requests == [], f"{name} got a request meant for {provider}"
        assert not s.saw_value(tok)


def test_total_ai_each_request_routed_independently(ai):
    tok = ai.token()
    c = ai.gw.openai("total-ai", tok)
    for model in ["gpt-4o-mini", "deepseek-chat", "gemini-2.0-flash", "gpt-4o-mini"]:
        c.chat.completions.create(**chat_body(model))
    assert [r.json()["model"] for r in ai.up["openai"].requests] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert [r.json()["model"] for r in ai.up["deepseek"].requests] == ["deepseek-chat"]
    assert [r.json()["model"] for r in ai.up["gemini"].requests] == ["gemini-2.0-flash"]


def test_body_forwarded_byte_for_byte(ai):
    tok = ai.token()
    raw = b'{"model":"deepseek-chat","messages":[{"role":"user","content":"caf\\u00e9 \xe2\x98\x95"}],"top_p":0.9}'
    with ai.gw.http() as h:
        r = h.post(ai.gw.url("total-ai", "/chat/completions"), content=raw,
                   headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    [req] = ai.up["deepseek"].requests
    assert req.body == raw
    assert req.header("content-type") == "application/json"


def test_caller_headers_cannot_override_injected_key(ai):
    tok = ai.token()
    with ai.gw.http() as h:
        r = h.post(ai.gw.url("gemini", "/chat/completions"), json=chat_body(),
                   headers=[("Authorization", f"Bearer {tok}"), ("X-Api-Key", "caller-key"),
                            ("Proxy-Authorization", f"Bearer {tok}")])
    assert r.status_code == 200, r.text
    [req] = ai.up["gemini"].requests
    assert [v for k, v in req.headers if k.lower() == "authorization"] == [f"Bearer {KEYS['gemini']}"]
    assert not ai.up["gemini"].saw_value(tok)


def test_upstream_error_passed_through_as_json(ai):
    """A wrong key in the Secret: the provider's 401 comes back (not the gateway's token error)."""
    ai.gw.create_secret("deepseek-wrong-key", "wrong-key")
    text = with_upstreams(seed_path("total-ai").read_text(), lambda c: ai.up[c].url)
    ai.gw.apply_text(text.replace("fromSecret: deepseek-api-key", "fromSecret: deepseek-wrong-key"))
    tok = ai.token()
    with ai.gw.http() as h:
        r = h.post(ai.gw.url("total-ai", "/chat/completions"), json=chat_body("deepseek-chat"),
                   headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 401
    assert "incorrect API key" in r.json()["error"]["message"]
    assert ai.up["deepseek"].requests[-1].header("authorization") == "Bearer wrong-key"


def test_curl_completion(ai):
    tok = ai.token()
    r = ai.gw.curl("-H", f"Authorization: Bearer {tok}", "-H", "Content-Type: application/json",
                   "--data", json.dumps(chat_body("gpt-4o-mini")), ai.gw.url("total-ai", "/chat/completions"))
    assert r.status == 200, r.body
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["choices"][0]["message"]["content"] == "Hello from openai!"
    assert ai.up["openai"].requests[0].path == "/v1/chat/completions"


def test_injected_key_never_returned_to_caller(ai):
    tok = ai.token()
    with ai.gw.http() as h:
        r = h.post(ai.gw.url("gemini", "/chat/completions"), json=chat_body(),
                   headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200
    assert KEYS["gemini"] not in r.text
    assert all(KEYS["gemini"] not in v for v in r.headers.values())


def test_seed_copies_are_byte_for_byte_the_shared_examples():
    """tests/e2e/seeds holds the shared examples unchanged (skipped where shared/ is absent)."""
    import os
    from pathlib import Path

    from conftest import REPO, SEEDS

    candidates = [os.environ.get("POSTERN_SHARED_EXAMPLES", ""), REPO.parent / "shared" / "examples",
                  REPO.parent.parent / "shared" / "examples", "/work/shared/examples"]
    found = next((Path(c) for c in candidates if c and (Path(c) / "gemini.yaml").is_file()), None)
    if found is None:
        pytest.skip("shared/examples not found")
    for name in ("gemini", "total-ai", "my-api", "identities"):
        assert (SEEDS / f"{name}.yaml").read_bytes() == (found / f"{name}.yaml").read_bytes(), name
