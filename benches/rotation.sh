#!/usr/bin/env bash
# Key rotation: the re-encryption rate, and tokenize throughput during a
# rotation against without one, measured in the same run.
#
# A vault with N email tokens (default 1,000,000, tokenized through HTTP),
# then two equal windows of tokenize load from 4 client threads (batches of
# 100 items: 50 known values, 50 new): the first without a rotation, the
# second starting with `keys rotate`. The rotation's duration is timed
# until `keys status` shows every row on the new version.
#
#   bash benches/rotation.sh            (TOKENS=200000 for a quicker run;
#                                        RATE=5000 rotates at most 5,000 rows/s)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${TOKENS:-1000000}
WINDOW=${WINDOW:-20}
RATE=${RATE:-0}
BIN=${TOKENVAULT_BIN:-target/release/tokenvault}
[ -x "$BIN" ] || cargo build --locked --release --quiet
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
printf 'benchmark passphrase, long enough' > "$work/passphrase"
chmod 600 "$work/passphrase"
out=$("$BIN" client new bench --role backend 2>/dev/null)
key=$(printf '%s\n' "$out" | grep -o 'tv\.bench\.[A-Za-z0-9_-]*' | head -1)
hash=$(printf '%s\n' "$out" | sed -n 's/^api_key_hash = "\(.*\)"/\1/p' | head -1)
cat > "$work/vault.toml" <<TOML
[server]
listen = "127.0.0.1:18998"
[storage]
data_dir = "$work/data"
[keys]
source = "passphrase"
passphrase_file = "$work/passphrase"
[namespaces.retail.classes.email]
normalize = "email"
format = "email"
[roles.backend]
operations = ["tokenize"]
namespaces = ["retail"]
[clients.bench]
role = "backend"
api_key_hash = "$hash"
TOML
"$BIN" init --config "$work/vault.toml" >/dev/null 2>&1
"$BIN" serve --config "$work/vault.toml" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18998/readyz >/dev/null && break; sleep 0.1; done

python3 - "$TOKENS" "$key" "$WINDOW" "$BIN" "$work/vault.toml" "$RATE" <<'PY'
import json, subprocess, sys, threading, time, urllib.request
total, key, window, binary, config = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
rate = sys.argv[6]
URL = "http://127.0.0.1:18998/v1/tokenize"
def post(items):
    req = urllib.request.Request(URL,
        data=json.dumps({"namespace": "retail", "items": items}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())
def fill(start):
    for b in range(start, total // 1000, 4):
        post([{"class": "email", "value": f"rot.{b}.{i}@example.com"} for i in range(1000)])
threads = [threading.Thread(target=fill, args=(i,)) for i in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]

def load(label, seconds):
    done, errors, stop = [0], [0], time.time() + seconds
    def work(worker):
        n = 0
        while time.time() < stop:
            n += 1
            known = [{"class": "email", "value": f"rot.{(worker * 7919 + n * 13 + i) % (total // 1000)}.{i}@example.com"} for i in range(50)]
            new = [{"class": "email", "value": f"{label}.{worker}.{n}.{i}@example.com"} for i in range(50)]
            try:
                post(known + new)
                done[0] += 100
            except Exception:
                errors[0] += 1
    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    return done[0] / seconds, errors[0]

def status():
    return subprocess.run([binary, "keys", "status", "--config", config], capture_output=True, text=True).stdout

baseline, e1 = load("base", window)
start = time.time()
subprocess.run([binary, "keys", "rotate", "--rows-per-second", rate, "--config", config], check=True, capture_output=True)
during, e2 = load("rot", window)
while "retail: writes with v2\n" not in status():
    time.sleep(0.5)
elapsed = time.time() - start
rows = total + int(baseline * window / 2) + int(during * window / 2)
print(f"tokens before rotation: {total:,}; rows moved: about {rows:,}; rate limit: {rate} rows/s (0: none)")
print(f"rotation: {elapsed:.1f} s, {rows / elapsed:,.0f} rows/s re-encrypted (with tokenize load for the first {window:.0f} s)")
print(f"tokenize items/s without a rotation: {baseline:,.0f} ({e1} errors); during it: {during:,.0f} ({e2} errors); ratio {during / baseline:.2f}")
PY
