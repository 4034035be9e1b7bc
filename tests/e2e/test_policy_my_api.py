"""my-api.yaml's inline policy over the caller's groups and the JSON body, with the users and
groups of identities.yaml: the request meeting every condition passes, each condition broken
alone is denied with a 403 JSON error that names no policy text."""

from contextlib import ExitStack

import openai
import pytest

from conftest import assert_error_body, chat_body, seed_path, with_upstreams
from standin import StandIn

POLICY_WORDS = ["hasAll", "bodyMap", "ctx.", "messages.size", "temperature <", "inlinePolicies"]


class MyApi:
    def __init__(self, gw, up):
        self.gw, self.up = gw, up
        self.creds = {u: gw.create_oauth2(u, f"{u}-oauth2") for u in ("ci-bot", "alice")}

    def token(self, user):
        return self.gw.token(*self.creds[user])

    def client(self, user):
        return self.gw.openai("my-api", self.token(user), base_path="/v1")

    def post(self, user, body):
        with self.gw.http() as h:
            return h.post(self.gw.url("my-api", "/v1/chat/completions"), json=body,
                          headers={"Authorization": f"Bearer {self.token(user)}"})


@pytest.fixture
def myapi(gateway):
    with ExitStack() as stack:
        up = stack.enter_context(StandIn("my-api"))
        gateway.apply_files(seed_path("identities"), seed_path("my-api"))
        # the seed has no isPublic (it is reached through the tunnel); the test variant makes it
        # public and points it at the stand-in, nothing else changes
        gateway.apply_text(with_upstreams(seed_path("my-api").read_text(), lambda _: up.url, make_public=True),
                           "my-api-test.yaml")
        yield MyApi(gateway, up)


GOOD = dict(model="gpt-4o-mini", n_messages=3, temperature=0.5)


def test_all_conditions_met_is_allowed(myapi):
    r = myapi.client("ci-bot").chat.completions.create(**chat_body(**GOOD))
    assert r.choices[0].message.content == "Hello from my-api!"
    [req] = myapi.up.requests
    assert req.path == "/v1/chat/completions"
    assert req.json()["temperature"] == 0.5
    # no auth configured on my-api: nothing in Authorization, certainly not the caller's token
    assert req.header("authorization") is None


@pytest.mark.parametrize("model", ["gpt-3.5-turbo", "gpt-4o-mini"])
def test_both_listed_models_allowed(myapi, model):
    r = myapi.post("ci-bot", chat_body(**dict(GOOD, model=model)))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "case,user,body",
    [
        ("user-only-in-dev", "alice", chat_body(**GOOD)),
        ("four-messages", "ci-bot", chat_body(**dict(GOOD, n_messages=4))),
        ("model-not-listed", "ci-bot", chat_body(**dict(GOOD, model="gpt-4o"))),
        ("temperature-0.7", "ci-bot", chat_body(**dict(GOOD, temperature=0.7))),
        ("temperature-missing", "ci-bot", chat_body(model="gpt-4o-mini", n_messages=3)),
        ("model-missing", "ci-bot", {"messages": [{"role": "user", "content": "x"}], "temperature": 0.1}),
    ],
)
def test_each_condition_broken_alone_is_denied(myapi, case, user, body):
    r = myapi.post(user, body)
    assert r.status_code == 403, (case, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert_error_body(r.json(), request_id=True)
    for word in POLICY_WORDS:
        assert word not in r.text, f"denial leaks policy text {word!r}: {r.text}"
    assert myapi.up.requests == [], "a denied request reached the upstream"


def test_denied_through_sdk_is_permission_denied(myapi):
    with pytest.raises(openai.PermissionDeniedError) as e:
        myapi.client("alice").chat.completions.create(**chat_body(**GOOD))
    assert e.value.status_code == 403
    assert e.value.body and "message" in e.value.body
    assert myapi.up.requests == []


def test_non_json_body_is_not_allowed(myapi):
    with myapi.gw.http() as h:
        r = h.post(myapi.gw.url("my-api", "/v1/chat/completions"), content=b"model=gpt-4o-mini",
                   headers={"Authorization": f"Bearer {myapi.token('ci-bot')}", "Content-Type": "text/plain"})
    assert r.status_code in (400, 403), r.text
    assert myapi.up.requests == []


def test_user_removed_from_group_is_denied_next_request(myapi):
    assert myapi.post("ci-bot", chat_body(**GOOD)).status_code == 200
    myapi.gw.apply_text("kind: User\nmetadata:\n  name: ci-bot\nspec:\n  type: WORKLOAD\n  groups: [dev]\n")
    r = myapi.post("ci-bot", chat_body(**GOOD))
    assert r.status_code == 403, r.text
    assert len(myapi.up.requests) == 1


def test_disabled_user_is_refused(myapi):
    tok = myapi.token("ci-bot")
    myapi.gw.apply_text("kind: User\nmetadata:\n  name: ci-bot\nspec:\n  type: WORKLOAD\n"
                        "  groups: [dev, ops]\n  isDisabled: true\n")
    with myapi.gw.http() as h:
        r = h.post(myapi.gw.url("my-api", "/v1/chat/completions"), json=chat_body(**GOOD),
                   headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code in (401, 403), r.text
    assert myapi.up.requests == []
