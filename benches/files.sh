#!/usr/bin/env bash
# Bulk file throughput and memory: a CSV of ROWS rows (default 1,000,000)
# with three PII columns (email, phone, name) and four others, through
# `tokenvault file tokenize` twice: the first run creates every token (all
# new), the second finds every one (all known). Prints rows per second and
# the peak RSS (GNU time's maximum resident set) of each run; a third run
# writes gzip. Needs /usr/bin/time.
#
#   bash benches/files.sh              (ROWS=200000 for a quicker run)
#   SUBJECT= bash benches/files.sh     (no --subject-column: no subject links)
#   BATCH_ROWS=8192 bash benches/files.sh   (rows per engine call; the CLI's default otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
SUBJECT=${SUBJECT-identity}
BIN=${TOKENVAULT_BIN:-target/release/tokenvault}
[ -x "$BIN" ] || cargo build --locked --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'benchmark passphrase, long enough' > "$work/passphrase"
chmod 600 "$work/passphrase"
cat > "$work/vault.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "$work/data"
[keys]
source = "passphrase"
passphrase_file = "$work/passphrase"
[namespaces.retail]
token_domain = "tok.retail.invalid"
[namespaces.retail.classes.email]
normalize = "email"
format = "email"
[namespaces.retail.classes.phone]
normalize = "e164"
format = "phone"
[namespaces.retail.classes.name]
normalize = "trim"
format = "opaque"
TOML
"$BIN" init --config "$work/vault.toml" >/dev/null

python3 - "$ROWS" "$work/export.csv" <<'PY'
import sys
rows, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    f.write("identity,Email,Phone,Name,City,Tier,Points\n")
    for i in range(rows):
        f.write(f"C{i},user.{i}@example.com,+1555{i:07d},\"Person, {i}\",Pune,Gold,{i % 5000}\n")
PY
size=$(du -h "$work/export.csv" | cut -f1)

run() { # label output extra-args…
  local label=$1 out=$2; shift 2
  local start end
  # The disk finishes the previous run's writes first, so that they are
  # not counted against this one.
  sync
  start=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$BIN" file tokenize --in "$work/export.csv" --out "$out" \
    --namespace retail --columns 'Email=email,Phone=phone,Name=name' \
    ${SUBJECT:+--subject-column "$SUBJECT"} ${BATCH_ROWS:+--batch-rows "$BATCH_ROWS"} \
    --config "$work/vault.toml" "$@" 2>"$work/stderr"
  end=$(date +%s.%N)
  local secs rss
  secs=$(echo "$end - $start" | bc)
  rss=$(( $(cat "$work/rss") / 1024 ))
  printf '%-22s %9d rows %8.1f s %9.0f rows/s  peak RSS %4d MB  (%s)\n' \
    "$label" "$ROWS" "$secs" "$(echo "$ROWS / $secs" | bc -l)" "$rss" "$(tail -1 "$work/stderr")"
}
echo "input: $ROWS rows, 3 PII columns, $size, subject column: ${SUBJECT:-none}; machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Baseline, same run: Python's csv module reading and writing the same file
# (parse and copy, no tokenization).
start=$(date +%s.%N)
python3 -c 'import csv,sys; w=csv.writer(open(sys.argv[2],"w",newline="")); [w.writerow(r) for r in csv.reader(open(sys.argv[1],newline=""))]' \
  "$work/export.csv" "$work/copy.csv"
secs=$(echo "$(date +%s.%N) - $start" | bc)
printf '%-22s %9d rows %8.1f s %9.0f rows/s\n' "baseline: python csv" "$ROWS" "$secs" "$(echo "$ROWS / $secs" | bc -l)"
run "csv, all new" "$work/first.csv"
run "csv, all known" "$work/second.csv"
run "csv.gz, all known" "$work/third.csv.gz"
cmp -s "$work/first.csv" "$work/second.csv" && echo "first and second outputs identical"
