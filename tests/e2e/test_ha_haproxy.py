"""Two gateways on one PostgreSQL behind haproxy in TCP mode, configured as
docs/operations.md shows (health check on ``/readyz`` over TLS with SNI, verified against
the gateway's CA): clients see one address; ``kill -9`` of one gateway costs at most the
requests in flight on it, and every caller goes on through the survivor."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import DOMAIN, free_port
from postgres import service_yaml, user_yaml, wait_for
from standin import StandIn
from tls_helpers import LoadLoop, curl

pytest_plugins = ["postgres"]

CONFIG = """\
global
    log stderr format raw local0 info
defaults
    log global
    option tcplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend postern
    bind 127.0.0.1:{port}
    mode tcp
    default_backend gateways
backend gateways
    mode tcp
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host {domain}
    http-check expect status 200
    default-server check inter 300ms fall 1 rise 2 check-ssl check-sni {domain} verify required ca-file {ca}
{servers}
"""


@pytest.fixture
def haproxy(tmp_path):
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if exe is None:
        pytest.skip("haproxy not installed (apt-get install -y haproxy)")
    procs: list[subprocess.Popen] = []

    def start(gateways) -> int:
        port = free_port()
        servers = "\n".join(f"    server {gw.gateway_name} 127.0.0.1:{gw.port}" for gw in gateways)
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(CONFIG.format(port=port, domain=DOMAIN, ca=gateways[0].internal_ca, servers=servers))
        check = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        log = open(tmp_path / "haproxy.log", "wb")
        procs.append(subprocess.Popen([exe, "-db", "-f", str(cfg)], stdout=log, stderr=log))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
                time.sleep(0.05)

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)


def test_kill_9_behind_haproxy_in_tcp_mode(start_gateway, pg_db, haproxy, tmp_path):
    with StandIn("llm", api_key=None, prefix="") as up:
        a = start_gateway(store=pg_db, gateway_name="gw-a")
        b = start_gateway(store=pg_db, gateway_name="gw-b", copy_of=a)
        a.apply_text(service_yaml(up.url))
        a.apply_text(user_yaml("app"))
        token = a.token(*a.create_oauth2("app", "app-oauth2"))
        port = haproxy([a, b])
        url = f"https://llm.{DOMAIN}:{port}/v1/models"
        auth = {"Authorization": f"Bearer {token}"}

        def served_by() -> set[str]:
            seen = set()
            for _ in range(6):
                r = curl(url, port, a.ca, "-H", f"Authorization: Bearer {token}", http="1.1")
                assert r.status == 200, r
            for gw in (a, b):
                if any(e.get("service") == "llm" for e in gw.access_entries()):
                    seen.add(gw.gateway_name)
            return seen

        # both gateways take traffic through the one address (both pass the /readyz check)
        wait_for("haproxy spreads connections over both gateways", lambda: served_by() == {"gw-a", "gw-b"}, 10.0,
                 interval=0.3)

        with LoadLoop(url, port, a.ca, auth) as load:
            load.wait_progress(5)
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(timeout=10)
            killed = load.counts()
            load.wait_progress(20)
            lost = load.failures()
            load.wait_progress(10)
        # at most the request each caller had in flight on gw-a when it died
        assert len(lost) <= len(load.workers), lost
        assert load.failures() == lost, load.failures()[len(lost):]
        after = {k: v - killed[k] for k, v in load.counts().items()}
        print(f"\nbehind haproxy, kill -9 of gw-a: {len(lost)} request(s) lost, then {after} served")
        assert a.proc.poll() is not None
        log = (tmp_path / "haproxy.log").read_text(errors="replace")
        assert "gw-a is DOWN" in log, log[-3000:]
