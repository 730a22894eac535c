#!/usr/bin/env bash
# Egress route throughput against nginx as a plain reverse proxy, in one run.
#
#   bash benches/egress-vs-nginx.sh            (needs: nginx, wrk; installs them with apt if missing)
#
# Both proxies sit in front of the same upstream (an nginx server block that
# answers 200), get the same payload (tests/fixtures/clevertap-upload-profiles-10.json)
# from wrk on 127.0.0.1, and are measured alternately. The vault's tokens
# are already known (a warm-up request stores them first), so this measures
# parse, tokenize (blind index hits), audit, re-serialize and forward.
# Prints a markdown table: requests/s, p50, p99, the vault/nginx ratio, and
# the vault's CPU time per request (user and system, all its threads).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
ROUNDS=${ROUNDS:-2}
FIXTURE=${FIXTURE:-tests/fixtures/clevertap-upload-profiles-10.json}
# FIELDS=none measures the floor: a route with no field rules (the scan only
# reports), so the vault does authentication, the audit record and the
# forward, and nothing else. Use it with a small payload, e.g.
#   FIELDS=none FIXTURE=benches/tiny-event.json bash benches/egress-vs-nginx.sh
FIELDS=${FIELDS:-clevertap}

for tool in nginx wrk; do
  command -v "$tool" >/dev/null || command -v "/usr/sbin/$tool" >/dev/null || {
    apt-get update >/dev/null && apt-get install -y nginx-light wrk >/dev/null; }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# TOKENVAULT_BIN measures another build (say, the commit before a change,
# built in a git worktree) against the same nginx in the same way.
if [ -n "${TOKENVAULT_BIN:-}" ]; then
  BIN=$TOKENVAULT_BIN
else
  cargo build --release --locked --quiet
  BIN=target/release/tokenvault
fi
WORK=$(mktemp -d)
cleanup() {
  [ -n "${VAULT_PID:-}" ] && kill "$VAULT_PID" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPSTREAM_PORT=$(free_port); NGINX_PORT=$(free_port); VAULT_PORT=$(free_port)

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  client_max_body_size 8m;
  upstream platform { server 127.0.0.1:$UPSTREAM_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$UPSTREAM_PORT;
    location / { client_body_buffer_size 1m; default_type application/json; return 200 '{"status":"success"}'; }
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /clevertap/ {
      client_body_buffer_size 1m;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "";
      proxy_set_header X-CleverTap-Account-Id "bench-account";
      proxy_pass http://platform/;
    }
  }
}
NGINX
"$NGINX" -c "$WORK/nginx.conf"

printf 'benchmark passphrase, long enough' > "$WORK/passphrase"; chmod 600 "$WORK/passphrase"
KEYS=$("$BIN" client new crm --role backend 2>/dev/null)
KEY=$(echo "$KEYS" | grep -o 'tv\.crm\.[A-Za-z0-9]*')
HASH=$(echo "$KEYS" | sed -n 's/^api_key_hash = "\(.*\)"$/\1/p')
cat > "$WORK/vault.toml" <<TOML
[server]
listen = "127.0.0.1:$VAULT_PORT"
[storage]
data_dir = "$WORK/data"
[keys]
source = "passphrase"
passphrase_file = "$WORK/passphrase"
[log]
level = "warn"
[namespaces.retail.classes.email]
normalize = "email"
format = "email"
[namespaces.retail.classes.phone]
normalize = "e164"
format = "phone"
[namespaces.retail.classes.name]
normalize = "trim"
[roles.backend]
operations = ["tokenize"]
namespaces = ["retail"]
[clients.crm]
role = "backend"
api_key_hash = "$HASH"
[[routes]]
name = "clevertap"
path_prefix = "/clevertap"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
insecure_allow_http_upstream = true
namespace = "retail"
clients = ["crm"]
headers = { "X-CleverTap-Account-Id" = { env = "BENCH_CT_ACCOUNT" } }
TOML
if [ "$FIELDS" = none ]; then
  printf 'unselected_pii = "report"\nfields = []\n' >> "$WORK/vault.toml"
else
  cat >> "$WORK/vault.toml" <<'TOML'
fields = [
  { select = "$.d[*].identity", class = "name" },
  { select = "$.d[*].profileData.Email", class = "email" },
  { select = "$.d[*].profileData.Phone", class = "phone" },
  { select = "$.d[*].profileData.Name", class = "name" },
]
TOML
fi
"$BIN" init --config "$WORK/vault.toml" >/dev/null 2>&1
BENCH_CT_ACCOUNT=bench-account "$BIN" serve --config "$WORK/vault.toml" > "$WORK/vault.out" 2>&1 &
VAULT_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$WORK/vault.out" && break; sleep 0.1; done

BODY=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$FIXTURE")
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$BODY]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
# Warm up: store the tokens, fill the key cache, open pooled connections.
for url in "http://127.0.0.1:$VAULT_PORT/clevertap/1/upload" "http://127.0.0.1:$NGINX_PORT/clevertap/1/upload"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url" -H 'Content-Type: application/json' -H "Authorization: Bearer $KEY" --data-binary "$BODY")
  [ "$code" = 200 ] || { echo "warm-up of $url answered $code"; cat "$WORK/vault.out"; exit 1; }
done

# The vault's CPU time so far (user and system, all threads), in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$VAULT_PID/stat"; }

run() { # name url -> "rps p50 p99 cpu_us_per_request" (the last only for the vault)
  local out perf_pid= ticks_before=
  [ "$1" = vault ] && ticks_before=$(cpu_ticks)
  # PERF_OUT=FILE records a CPU profile of the vault during its first round
  # (use a build with frame pointers: RUSTFLAGS="-C force-frame-pointers=yes").
  if [ "$1" = vault ] && [ -n "${PERF_OUT:-}" ] && [ ! -e "$PERF_OUT" ]; then
    perf record -q -F 499 --call-graph fp -o "$PERF_OUT" -p "$VAULT_PID" 2>/dev/null &
    perf_pid=$!
  fi
  out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/post.lua" "$2")
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  if echo "$out" | grep -q "Non-2xx"; then echo "$1 had non-2xx answers:" >&2; echo "$out" >&2; exit 1; fi
  local rps p50 p99 cpu=-
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  if [ -n "$ticks_before" ]; then
    # CPU per request moves far less than requests per second with what
    # else the machine runs: the figure to compare two builds by.
    local requests ticks
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    ticks=$(( $(cpu_ticks) - ticks_before ))
    cpu=$(python3 -c "print(round($ticks * 1e6 / $(getconf CLK_TCK) / $requests))")
  fi
  echo "$rps $p50 $p99 $cpu"
}

rss() { awk -v f="$1:" '$1==f {printf "%.1f", $2/1024}' "/proc/$VAULT_PID/status"; }
IDLE_RSS=$(rss VmRSS)
echo "egress route vs nginx: $ROUNDS alternating rounds of wrk -t2 -c$CONNECTIONS -d$DURATION, payload $(basename "$FIXTURE") ($(printf %s "$BODY" | wc -c) bytes)"
echo
echo "| round | nginx req/s | nginx p50 | nginx p99 | vault req/s | vault p50 | vault p99 | vault / nginx | vault CPU per request |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for round in $(seq "$ROUNDS"); do
  read -r n_rps n_p50 n_p99 _ < <(run nginx "http://127.0.0.1:$NGINX_PORT/clevertap/1/upload")
  read -r v_rps v_p50 v_p99 v_cpu < <(run vault "http://127.0.0.1:$VAULT_PORT/clevertap/1/upload")
  ratio=$(python3 -c "print(f'{100*$v_rps/$n_rps:.0f}%')")
  echo "| $round | $n_rps | $n_p50 | $n_p99 | $v_rps | $v_p50 | $v_p99 | $ratio | ${v_cpu} µs |"
done
echo
echo "vault RSS: idle after warm-up ${IDLE_RSS} MiB; after the runs $(rss VmRSS) MiB, peak (VmHWM) $(rss VmHWM) MiB"
