#!/usr/bin/env bash
# CI: no Docker engine runs on the CI machine, so the Dockerfile is checked
# without `docker build`:
#  1. its build stage runs the release build script CI itself runs
#     (packaging/build-release.sh), on the toolchain CI uses;
#  2. its runtime stage runs as a numeric non-root user, declares the data
#     volume and a HEALTHCHECK through `tokenvault healthcheck`, and ships
#     the SBOM the release build wrote;
#  3. the runtime contract is exercised with the binary CI built: as uid
#     65532, configuration by file, passphrase by file named in an
#     environment variable, `init`, `serve`, then `healthcheck`.
# Needs root (to switch to uid 65532) and target/release/tokenvault.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-dockerfile: FAIL: $*" >&2; exit 1; }
df=Dockerfile

grep -qx 'RUN bash packaging/build-release.sh \\' "$df" || fail "build stage does not run packaging/build-release.sh"
rust_version=$(rustc --version | sed -E 's/^rustc ([0-9]+\.[0-9]+).*/\1/')
grep -q "^FROM rust:${rust_version}-" "$df" || fail "build image is not rust:${rust_version} (the CI toolchain)"
grep -qx 'USER 65532:65532' "$df" || fail "runtime user is not numeric 65532:65532"
grep -qx 'VOLUME /var/lib/tokenvault' "$df" || fail "no VOLUME /var/lib/tokenvault"
grep -q 'CMD \["/usr/bin/tokenvault", "healthcheck"\]' "$df" || fail "HEALTHCHECK does not run tokenvault healthcheck"
[ "$(grep -c '^FROM ' "$df")" -eq 2 ] || fail "expected a two-stage build"
grep -qx 'COPY --from=build /src/target/packaging/tokenvault.cdx.json /usr/share/doc/tokenvault/sbom/tokenvault.cdx.json' "$df" \
  || fail "the image does not ship the SBOM"
[ -s target/packaging/tokenvault.cdx.json ] || fail "the release build wrote no SBOM"
grep -qx 'ARG SOURCE_DATE_EPOCH' "$df" || fail "the build stage does not take SOURCE_DATE_EPOCH"
echo "ok: Dockerfile stages, user, volume, healthcheck and SBOM"

bin=target/release/tokenvault
[ -x "$bin" ] || fail "$bin missing; run packaging/build-release.sh first"
work=$(mktemp -d)
chmod 0755 "$work"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
install -d -m 0755 "$work/etc" "$work/secrets"
install -d -m 0700 -o 65532 -g 65532 "$work/data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/etc/vault.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[storage]
data_dir = "$work/data"
[keys]
source = "passphrase"
passphrase_file = "/run/secrets/passphrase"
[namespaces.retail.classes.email]
normalize = "email"
format = "email"
TOML
chmod 0644 "$work/etc/vault.toml"
head -c 24 /dev/urandom | base64 >"$work/secrets/passphrase"
chown 65532:65532 "$work/secrets/passphrase"
chmod 0600 "$work/secrets/passphrase"
container=(setpriv --reuid=65532 --regid=65532 --clear-groups
  env -i TOKENVAULT_CONFIG="$work/etc/vault.toml"
  TOKENVAULT_KEYS__PASSPHRASE_FILE="$work/secrets/passphrase" "$bin")
as_container() { "${container[@]}" "$@"; }
as_container init
# setpriv and env exec: $! is the vault itself.
"${container[@]}" serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  grep -q "tokenvault listening" "$work/serve.log" && break
  sleep 0.1
done
as_container healthcheck || { cat "$work/serve.log" >&2; fail "healthcheck failed as uid 65532"; }
[ "$(stat -c '%u %a' "$work/data")" = "65532 700" ] || fail "data directory is not 65532 0700"
kill "$pid"
wait "$pid" 2>/dev/null || true
if as_container healthcheck 2>/dev/null; then fail "healthcheck passed with the vault stopped"; fi
echo "ok: init, serve and healthcheck as uid 65532 with config and secret by mount and environment"
echo "check-dockerfile: all checks passed"
