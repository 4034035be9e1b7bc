# The AI-shaped cases of scripts/bench, sourced by it after its helpers: HTTP/2 at the front
# door (cases 9-12, h2load), a 100 KiB request body (cases 13-16, wrk) and streaming time to
# first token (cases 17-21, scripts/bench-ttft.py; case 22, LiteLLM, runs inside case 6).
# scripts/bench calls ai_cases after case 8. See docs/performance.md, "What is measured".

# h2load: one stream per connection (-m 1), so concurrency means requests in flight as with wrk.
H2_STREAMS=1
# Streamed requests per TTFT case, one after the other (each ~0.5 s: 50 chunks 10 ms apart).
TTFT_REQUESTS=20
[ "$QUICK" = 1 ] && TTFT_REQUESTS=5

# run_h2 ID NAME PIDS URL [AUTHORITY] [AUTH]: h2load at each concurrency, the chat body POSTed
# over HTTP/2 (TLS, ALPN h2); fails the row unless h2 was negotiated.
run_h2() {
    local id=$1 name=$2 pid=$3 url=$4 host=${5:-} auth=${6:-}
    local hdr=(-H 'content-type: application/json')
    [ -z "$host" ] || hdr+=(-H ":authority: $host")
    [ -z "$auth" ] || hdr+=(-H "authorization: $auth")
    IFS=, read -ra cs <<< "$CONCURRENCY"
    for c in "${cs[@]}"; do
        local t=$(( c < 2 ? c : 2 )) out="$WORK/h2load-$id-$c"
        h2load -t"$t" -c"$c" -m"$H2_STREAMS" -D 1s -d "$WORK/body.json" "${hdr[@]}" "$url" \
            > "$out.warm.txt" 2>&1 || true
        read -r cpu0 _ < <(proc_stats "$pid")
        h2load -t"$t" -c"$c" -m"$H2_STREAMS" -D "$DURATION" -T 5s -d "$WORK/body.json" "${hdr[@]}" \
            --log-file "$out.log" "$url" > "$out.txt" 2>&1 || true
        read -r cpu1 hwm < <(proc_stats "$pid")
        python3 - "$out" "$id" "$name" "$c" "$cpu0" "$cpu1" "$hwm" "$CLK_TCK" >> "$RESULTS" <<'EOF'
import json, re, sys
out, cid, name, c, cpu0, cpu1, hwm, tck = sys.argv[1:]
r = {"case": int(cid), "name": name, "concurrency": int(c), "protocol": "h2"}
text = open(out + ".txt").read()
proto = re.search(r"Application protocol: (\S+)", text)
done = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
reqs = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
lat = []
try:
    for line in open(out + ".log"):
        f = line.split("\t")
        if len(f) >= 3 and f[1] == "200":
            lat.append(int(f[2]))
except OSError:
    pass
if not proto or proto.group(1) != "h2":
    r["error"] = f"HTTP/2 not negotiated (h2load: {proto.group(1) if proto else 'no application protocol'})"
elif not (done and reqs and codes) or not lat:
    r["error"] = "no h2load figures: " + " | ".join(text.strip().splitlines()[-3:])
elif int(reqs.group(4)) or int(reqs.group(5)) or sum(int(codes.group(i)) for i in (2, 3, 4)) or not int(codes.group(1)):
    # (A request still in flight when -D ends may count in "2xx" but not in "done".)
    r["error"] = (f"{reqs.group(2)} requests done, {reqs.group(4)} failed, {reqs.group(5)} errored; "
                  f"status codes {codes.group(1)} 2xx, {codes.group(2)} 3xx, {codes.group(3)} 4xx, {codes.group(4)} 5xx")
else:
    n = int(reqs.group(2))
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] / 1000
    cpu = (int(cpu1) - int(cpu0)) / int(tck)
    r.update(rps=float(done.group(3)), p50_ms=round(pct(50), 3), p99_ms=round(pct(99), 3),
             cpu_s_per_10k=round(cpu * 10000 / n, 3), peak_rss_mib=round(int(hwm) / 1024, 1))
print(json.dumps(r))
EOF
        tail -1 "$RESULTS" | sed 's/^/    /' >&2
    done
}

# run_ttft ID NAME URL [HOST] [AUTH]: TTFT_REQUESTS streamed requests, one after the other.
run_ttft() {
    local id=$1 name=$2 url=$3 host=${4:-} auth=${5:-} out="$WORK/ttft-$1.json"
    python3 "$ROOT/scripts/bench-ttft.py" "$url" --host "$host" --auth "$auth" \
        --requests "$TTFT_REQUESTS" --cafile "$PDIR/data/ca.pem" --case "$id" --name "$name" \
        > "$out" 2> "$out.err" || true
    # results.json keeps the per-stream summary; the arrival times stay in target/bench/run/.
    python3 - "$out" "$id" "$name" >> "$RESULTS" <<'EOF'
import json, sys
out, cid, name = sys.argv[1:]
try:
    r = json.load(open(out))
except Exception as e:
    r = {"case": int(cid), "name": name, "kind": "ttft",
         "error": f"bench-ttft.py gave no result ({e}; see {out}.err)"}
for s in r.get("streams", []):
    s.pop("arrivals_ms", None)
print(json.dumps(r))
EOF
    tail -1 "$RESULTS" | cut -c1-300 | sed 's/^/    /' >&2
}

# ai_cases: cases 9-21 (needs the upstream, case 2's nginx.conf, case 3's haproxy.cfg and case
# 4's access token).
ai_cases() {
    # ---------------------------------------------------------------- the request bodies
    printf '%s' "$REQ_BODY" > "$WORK/body.json"
    # 100 KiB of chat messages (a long conversation), model and temperature as in the small body.
    python3 - "$WORK/large-body.json" <<'EOF'
import json, sys
msgs, i = [{"role": "system", "content": "You are a helpful assistant."}], 0
line = "Here is another paragraph of the conversation so far, kept to test large bodies. "
while len(json.dumps(msgs)) < 100 * 1024 - 200:
    msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"{i}: " + line * 4})
    i += 1
body = json.dumps({"model": "gpt-4o-mini", "temperature": 0.7, "messages": msgs}, separators=(",", ":"))
open(sys.argv[1], "w").write(body)
EOF
    sed "s|^wrk.body = .*|local bf = assert(io.open(\"$WORK/large-body.json\")); wrk.body = bf:read(\"*a\"); bf:close()|" \
        "$WORK/request.lua" > "$WORK/request-large.lua"

    # ---------------------------------------------------------------- nginx and haproxy, h2 and SSE
    # One nginx: a server like case 2's that also speaks h2 (ALPN) and keeps a 100 KiB body in
    # memory, and a second one for SSE with proxy_buffering off.
    NG2=$WORK/nginx-ai; mkdir -p "$NG2/tmp"
    NG2_PORT=$(free_port)
    NG2_SSE_PORT=$(free_port)
    sed -e "s|$NG/|$NG2/|g" -e "s|listen 127.0.0.1:$NG_PORT ssl;|listen 127.0.0.1:$NG2_PORT ssl http2;\n        client_body_buffer_size 256k;|" \
        "$NG/nginx.conf" > "$NG2/nginx.conf"
    python3 - "$NG2/nginx.conf" "$NG2_SSE_PORT" "$TLSDIR" <<'EOF'
import sys
path, port, tls = sys.argv[1:]
conf = open(path).read().rstrip()
assert conf.endswith("}")
conf = conf[:-1] + f"""    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tls}/cert.pem;
        ssl_certificate_key {tls}/key.pem;
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
open(path, "w").write(conf)
EOF
    "$NGINX" -p "$NG2" -c "$NG2/nginx.conf" > "$NG2/stdout.log" 2>&1 & NG2_PID=$!; pids+=("$NG2_PID")
    HA2=$WORK/haproxy-ai; mkdir -p "$HA2"
    HA2_PORT=$(free_port)
    sed -e "s|bind 127.0.0.1:$HA_PORT ssl crt $TLSDIR/combined.pem|bind 127.0.0.1:$HA2_PORT ssl crt $TLSDIR/combined.pem alpn h2,http/1.1|" \
        "$HA/haproxy.cfg" > "$HA2/haproxy.cfg"
    "$HAPROXY" -db -f "$HA2/haproxy.cfg" > "$HA2/haproxy.log" 2>&1 & HA2_PID=$!; pids+=("$HA2_PID")
    NG2_OK=0; HA2_OK=0
    wait_port "$NG2_PORT" && wait_port "$NG2_SSE_PORT" && NG2_OK=1
    wait_port "$HA2_PORT" && HA2_OK=1

    # The gateway of case 5 (full AI path, access log on) serves both Postern routes.
    PG_AI_OK=0
    if [ -n "$ACCESS" ] && start_posternd --access-log "$PDIR/access-ai.log"; then
        $CURL -o /dev/null "https://bench-ai.$DOMAIN:$PG_PORT/chat/completions" \
            -H "Authorization: Bearer $ACCESS" -H 'content-type: application/json' -d @"$WORK/large-body.json" &&
            PG_AI_OK=1
    fi
    PG_AI="https://127.0.0.1:$PG_PORT"

    h2_or_fail() { # h2_or_fail OK ID NAME WHY run_h2-args...
        local ok=$1 id=$2 name=$3 why=$4; shift 4
        if [ "$ok" = 1 ]; then run_h2 "$id" "$name" "$@"
        else echo "{\"case\": $id, \"name\": \"$name\", \"protocol\": \"h2\", \"error\": \"$why\"}" >> "$RESULTS"; fi
    }
    log "cases 9-12: HTTP/2 at the front door (h2load, $H2_STREAMS stream per connection)"
    h2_or_fail "$NG2_OK" 9 nginx-h2 "nginx did not start" "$NG2_PID" "https://127.0.0.1:$NG2_PORT/v1/chat/completions"
    h2_or_fail "$HA2_OK" 10 haproxy-h2 "haproxy did not start" "$HA2_PID" "https://127.0.0.1:$HA2_PORT/v1/chat/completions"
    h2_or_fail "$PG_AI_OK" 11 postern-ai-h2 "posternd did not start or answer" "$PG_PID" "$PG_AI/chat/completions" \
        "bench-ai.$DOMAIN:$PG_PORT" "Bearer $ACCESS"
    h2_or_fail "$PG_AI_OK" 12 postern-stream-h2 "posternd did not start or answer" "$PG_PID" "$PG_AI/v1/chat/completions" \
        "bench-stream.$DOMAIN:$PG_PORT" "Bearer $ACCESS"

    log "cases 13-16: a 100 KiB request body (wrk, HTTP/1.1)"
    export BENCH_LUA=$WORK/request-large.lua
    run_case 13 direct-large-body "$UP_PID" "http://127.0.0.1:$UP_PORT/v1/chat/completions"
    if [ "$NG2_OK" = 1 ]; then run_case 14 nginx-large-body "$NG2_PID" "https://127.0.0.1:$NG2_PORT/v1/chat/completions"
    else echo '{"case": 14, "name": "nginx-large-body", "error": "nginx did not start"}' >> "$RESULTS"; fi
    if [ "$HA2_OK" = 1 ]; then run_case 15 haproxy-large-body "$HA2_PID" "https://127.0.0.1:$HA2_PORT/v1/chat/completions"
    else echo '{"case": 15, "name": "haproxy-large-body", "error": "haproxy did not start"}' >> "$RESULTS"; fi
    if [ "$PG_AI_OK" = 1 ]; then
        run_case 16 postern-ai-large-body "$PG_PID" "$PG_AI/chat/completions" "bench-ai.$DOMAIN:$PG_PORT" "Bearer $ACCESS"
    else echo '{"case": 16, "name": "postern-ai-large-body", "error": "posternd did not start or refused the 100 KiB body"}' >> "$RESULTS"; fi
    unset BENCH_LUA

    log "cases 17-21: streaming, time to first token ($TTFT_REQUESTS streams of 50 SSE chunks each)"
    run_ttft 17 ttft-direct "http://127.0.0.1:$UP_PORT/v1/chat/completions"
    if [ "$NG2_OK" = 1 ]; then run_ttft 18 ttft-nginx "https://127.0.0.1:$NG2_SSE_PORT/v1/chat/completions" "bench.localhost"
    else echo '{"case": 18, "name": "ttft-nginx", "kind": "ttft", "error": "nginx did not start"}' >> "$RESULTS"; fi
    if [ "$HA2_OK" = 1 ]; then run_ttft 19 ttft-haproxy "https://127.0.0.1:$HA2_PORT/v1/chat/completions" "bench.localhost"
    else echo '{"case": 19, "name": "ttft-haproxy", "kind": "ttft", "error": "haproxy did not start"}' >> "$RESULTS"; fi
    if [ "$PG_AI_OK" = 1 ]; then
        run_ttft 20 ttft-postern-stream "$PG_AI/v1/chat/completions" "bench-stream.$DOMAIN:$PG_PORT" "Bearer $ACCESS"
        run_ttft 21 ttft-postern-ai "$PG_AI/chat/completions" "bench-ai.$DOMAIN:$PG_PORT" "Bearer $ACCESS"
    else
        echo '{"case": 20, "name": "ttft-postern-stream", "kind": "ttft", "error": "posternd did not start"}' >> "$RESULTS"
        echo '{"case": 21, "name": "ttft-postern-ai", "kind": "ttft", "error": "posternd did not start"}' >> "$RESULTS"
    fi
    stop "$PG_PID"; stop "$NG2_PID"; stop "$HA2_PID"
}
