"""``posternd migrate --from DATA_DIR --to postgres://...``: a SQLite install with resources,
sealed Secrets, Credentials, Sessions and usage moves to PostgreSQL; a non-empty target is
refused without ``--force``; then the same tokens, credentials, secrets and policies work on
PostgreSQL with the SQLite file out of the way."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import chat_body, seed_path, with_upstreams
from postgres import db_name, wait_for

pytest_plugins = ["postgres"]

GOOD = dict(model="gpt-4o-mini", n_messages=3, temperature=0.5)


def usage_by_user(gw) -> dict:
    out = gw.ctl("usage", "--by", "user", "-o", "json").stdout
    return {i["key"]: i for i in json.loads(out)["items"]}


def my_api(gw, token: str, body: dict) -> int:
    with gw.http() as h:
        return h.post(gw.url("my-api", "/v1/chat/completions"), json=body,
                      headers={"Authorization": f"Bearer {token}"}).status_code


def migrate(gw, url: str, *extra: str) -> subprocess.CompletedProcess:
    return gw.run("posternd", "migrate", "--from", str(gw.data_dir), "--to", url, *extra, check=False,
                  timeout=120)


def test_migrate_a_sqlite_install_to_postgres(ai, pg_cluster, pg_db):
    gw = ai.gw
    # the my-api seed's policy over groups and body, reachable for the test
    gw.apply_text(with_upstreams(seed_path("my-api").read_text(), lambda _: ai.up["my-api"].url, make_public=True),
                  "my-api-test.yaml")
    bot = gw.create_oauth2("ci-bot", "ci-bot-oauth2")
    bot_token = gw.token(*bot)
    app_token = ai.token()
    auth_token = gw.create_auth_token("alice", "alice-token")
    assert my_api(gw, bot_token, chat_body(**GOOD)) == 200
    assert my_api(gw, bot_token, chat_body(**dict(GOOD, model="gpt-4o"))) == 403
    for _ in range(2):
        reply = gw.openai("gemini", app_token).chat.completions.create(**chat_body())
        assert reply.usage.total_tokens == 18
    before = {kind: sorted(gw.names(kind)) for kind in ("services", "users", "groups", "policies",
                                                        "secrets", "credentials")}
    sessions_before = len(gw.get("sessions"))
    usage_before = usage_by_user(gw)
    assert usage_before["app"]["requests"] == 2, usage_before
    gw.stop()

    # into an empty database: every table copied, counts verified
    r = migrate(gw, pg_db)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "counts verified" in r.stdout, r.stdout
    line = next(l for l in r.stdout.splitlines() if l.startswith("migrated:"))
    counts = {k: int(n) for n, k in re.findall(r"(\d+) ([a-z ]+?)(?=,|;|$)", line.split(":", 1)[1])}
    print(f"\n{line}")
    assert counts.get("secrets") == len(before["secrets"]) == 3, counts
    assert counts.get("credentials") == len(before["credentials"]), counts
    resources = sum(len(before[k]) for k in ("services", "users", "groups", "policies"))
    assert counts.get("resources") == resources, (counts, before)
    assert counts.get("sessions", 0) >= sessions_before, counts

    # a database that holds an install is refused, untouched, unless --force
    again = migrate(gw, pg_db)
    assert again.returncode == 1, again.stdout + again.stderr
    said = again.stdout + again.stderr
    assert "--force" in said and ("empty" in said or db_name(pg_db) in said), said
    assert pg_cluster.sql(db_name(pg_db), "SELECT count(*) FROM secrets") == "3"
    forced = migrate(gw, pg_db, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "counts verified" in forced.stdout
    assert pg_cluster.sql(db_name(pg_db), "SELECT count(*) FROM secrets") == "3"

    # serve from PostgreSQL only: the SQLite file is moved away
    sqlite = gw.data_dir / "postern.db"
    sqlite.rename(gw.data_dir / "postern.db.migrated")
    gw.store = pg_db
    gw.serve()
    with gw.http() as h:
        health = h.get(gw.url(None, "/healthz")).json()
    assert health["store"]["backend"] == "postgres", health

    # the same tokens (Sessions), credentials, sealed secrets and policies
    reply = gw.openai("gemini", app_token).chat.completions.create(**chat_body())
    assert reply.usage.total_tokens == 18  # the stand-in only answers with the unsealed key
    assert ai.up["gemini"].requests[-1].header("authorization") == "Bearer gm-key-3f9a1c"
    assert my_api(gw, bot_token, chat_body(**GOOD)) == 200
    assert my_api(gw, bot_token, chat_body(**dict(GOOD, model="gpt-4o"))) == 403
    assert my_api(gw, gw.token(*bot), chat_body(**GOOD)) == 200
    assert gw.openai("total-ai", ai.token()).chat.completions.create(**chat_body("deepseek-chat")).usage
    assert gw.login(auth_token, check=False).returncode == 0
    gw.login(gw.admin_token)
    after = {kind: sorted(gw.names(kind)) for kind in before}
    assert after == before
    assert len(gw.get("sessions")) >= sessions_before
    # usage from SQLite plus the two requests above, summed on PostgreSQL
    wait_for("usage on PostgreSQL", lambda: usage_by_user(gw)["app"]["requests"] == 4, 5.0, interval=0.2)
    assert usage_by_user(gw)["app"]["totalTokens"] == 4 * 18
    assert not sqlite.exists()
