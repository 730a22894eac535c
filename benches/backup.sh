#!/usr/bin/env bash
# Backup time and size for N tokens (default 1,000,000): a vault with a
# configuration file, N email values tokenized through HTTP in batches of
# 1,000 from 4 clients, then `backup create` (the vault serving),
# `backup verify --config` and `backup restore`, each timed.
#
#   bash benches/backup.sh            (TOKENS=200000 for a quicker run)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${TOKENS:-1000000}
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
listen = "127.0.0.1:18999"
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
"$BIN" init --config "$work/vault.toml" >/dev/null
"$BIN" serve --config "$work/vault.toml" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18999/readyz >/dev/null && break; sleep 0.1; done

python3 - "$TOKENS" "$key" <<'PY'
import json, sys, threading, urllib.request
total, key = int(sys.argv[1]), sys.argv[2]
batches = total // 1000
def work(start):
    for b in range(start, batches, 4):
        items = [{"class": "email", "value": f"backup.{b}.{i}@example.com"} for i in range(1000)]
        req = urllib.request.Request("http://127.0.0.1:18999/v1/tokenize",
            data=json.dumps({"namespace": "retail", "items": items}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        urllib.request.urlopen(req).read()
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
PY

seconds() { local start=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $start" | bc; }
data_bytes=$(du -cb "$work/data"/vault.db* "$work/data"/audit.db* | tail -1 | cut -f1)
create=$(seconds "$BIN" backup create --out "$work/b.tvbackup" --config "$work/vault.toml")
size=$(stat -c %s "$work/b.tvbackup")
verify=$(seconds "$BIN" backup verify "$work/b.tvbackup" --config "$work/vault.toml")
verify_all=$(seconds "$BIN" backup verify "$work/b.tvbackup" --config "$work/vault.toml" --all-values)
restore=$(seconds "$BIN" backup restore "$work/b.tvbackup" --data-dir "$work/restored" --no-newer-erasures --config "$work/vault.toml")
echo "tokens: $TOKENS; data directory databases: $((data_bytes / 1048576)) MiB; backup: $((size / 1048576)) MiB"
echo "backup create (vault serving): ${create} s; verify (checksums, integrity, chain, 100 values): ${verify} s; verify --all-values: ${verify_all} s; restore: ${restore} s"
