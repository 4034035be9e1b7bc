"""The front door's threads (gateway/src/frontdoor/workers.rs): one runtime and one
SO_REUSEPORT listener per thread. Every thread takes connections, a second gateway cannot
join the port, and TLS sessions resume (stateless tickets) whichever thread serves."""

import os
import socket
import ssl
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from conftest import DOMAIN
from postgres import CHAT, db_name, service_yaml, user_yaml, wait_for
from standin import StandIn

pytest_plugins = ["postgres"]


def door_thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks (user + system) of each `postern-door-N` thread of process `pid`."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        if comm.startswith("postern-door-"):
            fields = stat[stat.rindex(")") + 2:].split()
            ticks[comm] = int(fields[11]) + int(fields[12])
    return ticks


def test_every_front_door_thread_takes_connections(start_gateway):
    gw = start_gateway(extra_args=["--workers", "2"])
    assert "(2 threads)" in gw.stderr()
    before = door_thread_ticks(gw.proc.pid)
    assert sorted(before) == ["postern-door-0", "postern-door-1"], before

    def client(_):
        # Each client is its own connection: the kernel spreads them over the listeners.
        with gw.http() as c:
            return [c.get(gw.url(path="/healthz")).status_code for _ in range(60)]

    with ThreadPoolExecutor(32) as ex:
        statuses = [s for batch in ex.map(client, range(32)) for s in batch]
    assert statuses == [200] * (32 * 60)
    after = door_thread_ticks(gw.proc.pid)
    idle = [t for t in after if after[t] <= before[t]]
    assert not idle, f"threads that served nothing: {idle} ({before} -> {after})"


def test_a_second_gateway_on_the_same_port_is_refused(start_gateway, tmp_path):
    gw = start_gateway()
    other = tmp_path / "other"
    init = subprocess.run([gw.bin("posternd"), "init", "--data-dir", str(other), "--domain", DOMAIN,
                           "-o", "json"], capture_output=True, text=True, env=gw.env)
    assert init.returncode == 0, init.stderr
    second = subprocess.run([gw.bin("posternd"), "serve", "--data-dir", str(other),
                             "--https-listen", f"127.0.0.1:{gw.port}", "--access-log", "off"],
                            capture_output=True, text=True, env=gw.env, timeout=30)
    assert second.returncode != 0
    assert f"binding --https-listen 127.0.0.1:{gw.port}" in second.stderr
    # The first gateway still has every connection.
    with gw.http() as c:
        assert c.get(gw.url(path="/healthz")).status_code == 200


def _handshake(ctx: ssl.SSLContext, port: int, session=None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname=DOMAIN, session=session)
    # TLS 1.3 tickets arrive after the handshake: a request and its answer bring them in.
    s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return s


def _bare_handshake(ctx: ssl.SSLContext, port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=DOMAIN):
            pass


def test_tls_sessions_resume_on_any_thread_after_many_other_clients(start_gateway):
    gw = start_gateway(extra_args=["--workers", "2"])
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = gw.tls()
        ctx.minimum_version = ctx.maximum_version = version
        first = _handshake(ctx, gw.port)
        assert not first.session_reused
        session = first.session
        first.close()
        # More clients than a server-side session cache keeps (rustls' default: 256): a
        # stateless ticket still resumes, whoever came in between.
        others = gw.tls()
        others.minimum_version = others.maximum_version = version
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda _: _bare_handshake(others, gw.port), range(300)))
        # Several new connections land on both threads; each resumes with the same ticket.
        resumed = []
        for _ in range(8):
            s = _handshake(ctx, gw.port, session=session)
            resumed.append(s.session_reused)
            s.close()
        assert all(resumed), f"{version.name}: resumed {resumed}"



def test_a_change_waiting_on_the_store_does_not_stall_the_thread(start_gateway, pg_cluster, pg_db):
    """One front-door thread; an apply blocked on a PostgreSQL lock must not hold up the
    proxied requests that thread serves: the control plane runs on the main runtime."""
    with StandIn("llm", api_key=None, prefix="") as up:
        gw = start_gateway(store=pg_db, extra_args=["--workers", "1"])
        gw.apply_text(service_yaml(up.url))
        gw.apply_text(user_yaml("app"))
        cid, secret = gw.create_oauth2("app", "app-oauth2")
        auth = {"Authorization": f"Bearer {gw.token(cid, secret)}"}
        db = db_name(pg_db)
        locker = threading.Thread(target=pg_cluster.sql, args=(
            db, "BEGIN; LOCK TABLE resources IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;"))
        locker.start()
        wait_for("the lock is held", lambda: pg_cluster.sql(
            db, "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted "
                "AND relation = 'resources'::regclass") == "1", 5.0, interval=0.05)
        applied: list[int] = []
        apply = threading.Thread(target=lambda: applied.append(
            gw.apply_text(service_yaml(up.url, name="other"), check=False).returncode))
        apply.start()
        wait_for("the apply waits on the lock", lambda: pg_cluster.sql(
            db, "SELECT count(*) FROM pg_locks WHERE NOT granted") != "0", 5.0, interval=0.05)
        for _ in range(5):
            with gw.http() as h:  # a new connection each time: the one thread must accept it
                r = h.post(gw.url("llm", "/v1/chat/completions"), json=CHAT, headers=auth)
            assert r.status_code == 200, r.text
        assert apply.is_alive(), ("the requests were answered only after the apply ended: the change "
                                  "held up the front-door thread (or the lock was released early)")
        apply.join(30)
        locker.join(30)
        assert applied == [0]
