#!/usr/bin/env bash
# CI: build the .deb, install it on this machine, check what it installed,
# verify the systemd unit and its sandbox score, then purge it.
# Needs root. Leaves the machine as it found it (apart from the data
# directory, which purge keeps on purpose and this script then removes).
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=1.5
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }
expect_stat() { # path owner:group mode
  local got
  got=$(stat -c '%U:%G %a' "$1") || fail "$1 is missing"
  [ "$got" = "$2 $3" ] || fail "$1 is $got, expected $2 $3"
  echo "ok: $1 $got"
}

# Tools the check uses: adduser (a dependency of the package), man (for the
# unit's Documentation= check) and systemd-analyze.
missing=()
command -v adduser >/dev/null || missing+=(adduser)
command -v man >/dev/null || missing+=(man-db)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update && apt-get install -y "${missing[@]}"
fi

if dpkg -s tokenvault >/dev/null 2>&1; then
  fail "tokenvault is already installed on this machine; refusing to touch it"
fi
if [ -e /var/lib/tokenvault ] || [ -e /etc/tokenvault ]; then
  fail "/var/lib/tokenvault or /etc/tokenvault exists already; refusing to touch it"
fi

bash packaging/build-deb.sh
deb=$(ls -t target/debian/tokenvault_*.deb | head -1)
echo "check-deb: installing $deb"
dpkg -i "$deb"
trap 'dpkg --purge tokenvault >/dev/null 2>&1 || true; rm -rf /var/lib/tokenvault /etc/tokenvault' EXIT

# The system user and group.
getent passwd tokenvault >/dev/null || fail "no tokenvault user"
getent group tokenvault >/dev/null || fail "no tokenvault group"
[ "$(getent passwd tokenvault | cut -d: -f7)" = /usr/sbin/nologin ] || fail "tokenvault user has a login shell"
uid=$(id -u tokenvault)
[ "$uid" -lt 1000 ] || fail "tokenvault is not a system user (uid $uid)"
echo "ok: system user tokenvault (uid $uid)"

# Files, owners and modes.
expect_stat /usr/bin/tokenvault root:root 755
expect_stat /etc/tokenvault root:tokenvault 750
expect_stat /etc/tokenvault/vault.toml root:tokenvault 640
expect_stat /var/lib/tokenvault tokenvault:tokenvault 700
expect_stat /usr/lib/systemd/system/tokenvault.service root:root 644
expect_stat /usr/lib/systemd/system/tokenvault-backup.service root:root 644
expect_stat /usr/lib/systemd/system/tokenvault-backup.timer root:root 644
for page in tokenvault tokenvault-serve tokenvault-init tokenvault-healthcheck tokenvault-audit-query; do
  expect_stat "/usr/share/man/man1/$page.1.gz" root:root 644
done
expect_stat /usr/share/bash-completion/completions/tokenvault root:root 644
expect_stat /usr/share/zsh/vendor-completions/_tokenvault root:root 644
expect_stat /usr/share/fish/vendor_completions.d/tokenvault.fish root:root 644
expect_stat /usr/share/doc/tokenvault/operations.md root:root 644
expect_stat /usr/share/doc/tokenvault/openapi.yaml root:root 644
# The SBOM: CycloneDX, for this version, and every component is a crate of
# Cargo.lock with the same checksum; the TLS and cipher crates are in it,
# OpenSSL and native-tls are not.
sbom=/usr/share/doc/tokenvault/sbom/tokenvault.cdx.json
expect_stat "$sbom" root:root 644
python3 - "$sbom" Cargo.lock <<'PY' || fail "the SBOM does not describe this build"
import json, sys, tomllib
bom = json.load(open(sys.argv[1]))
lock = {(p["name"], p["version"]): p.get("checksum") for p in tomllib.load(open(sys.argv[2], "rb"))["package"]}
assert bom["bomFormat"] == "CycloneDX", bom["bomFormat"]
top = bom["metadata"]["component"]
assert (top["name"], top["version"]) in lock, top
names = set()
for c in bom["components"]:
    key = (c["name"], c["version"])
    assert key in lock, f"{key} is not in Cargo.lock"
    sha = [h["content"] for h in c.get("hashes", []) if h["alg"] == "SHA-256"]
    assert sha == [lock[key]], f"{key}: checksum {sha} is not Cargo.lock's"
    assert c.get("licenses"), f"{key} has no licence"
    names.add(c["name"])
for needed in ("rustls", "aes-gcm-siv", "rusqlite", "ring", "argon2", "hkdf"):
    assert needed in names, f"{needed} missing"
for banned in ("openssl", "openssl-sys", "native-tls"):
    assert banned not in names, f"{banned} present"
print(f"ok: SBOM lists {len(names)} crates, each with Cargo.lock's version and checksum")
PY
grep -qx /etc/tokenvault/vault.toml /var/lib/dpkg/info/tokenvault.conffiles || fail "vault.toml is not a conffile"
echo "ok: vault.toml is a conffile"
cmp -s vault.toml.example /etc/tokenvault/vault.toml || fail "installed vault.toml differs from vault.toml.example"
man -w tokenvault >/dev/null || fail "man cannot find tokenvault(1)"
echo "ok: man tokenvault"

# Enabled, not started.
[ -L /etc/systemd/system/multi-user.target.wants/tokenvault.service ] || fail "the unit is not enabled"
echo "ok: unit enabled"
[ ! -e /etc/systemd/system/timers.target.wants/tokenvault-backup.timer ] || fail "the backup timer is enabled by the install"
echo "ok: backup timer installed, not enabled"
if [ -d /run/systemd/system ]; then
  ! systemctl is-active --quiet tokenvault || fail "the unit was started by the install"
  echo "ok: unit not started"
fi

# The installed binary and configuration, as root and as the service user
# (who reads the configuration through its group).
/usr/bin/tokenvault --version
/usr/bin/tokenvault config check --config /etc/tokenvault/vault.toml
runuser -u tokenvault -- /usr/bin/tokenvault config check --config /etc/tokenvault/vault.toml
if denied=$(runuser -u nobody -- /usr/bin/tokenvault config check --config /etc/tokenvault/vault.toml 2>&1); then
  fail "a user outside the tokenvault group can read vault.toml"
fi
printf '%s\n' "$denied" | grep -q "Permission denied" || fail "unexpected failure as nobody: $denied"
echo "ok: vault.toml unreadable to other users"

# The unit: syntax, and the sandbox score.
systemd-analyze verify /usr/lib/systemd/system/tokenvault.service \
  /usr/lib/systemd/system/tokenvault-backup.service /usr/lib/systemd/system/tokenvault-backup.timer
echo "ok: systemd-analyze verify (vault, backup service and timer)"
report=$(systemd-analyze security --offline=yes /usr/lib/systemd/system/tokenvault.service)
score=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for tokenvault.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "no exposure score in: $report"
echo "systemd-analyze security --offline=yes: exposure $score (limit $MAX_EXPOSURE)"
awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' || {
  printf '%s\n' "$report" | grep '✗' >&2
  fail "exposure $score is above $MAX_EXPOSURE"
}

# Purge: user, group and configuration go; the data directory stays.
echo "keep me" >/var/lib/tokenvault/canary-data
echo "secret" >/etc/tokenvault/passphrase
dpkg --purge tokenvault
! getent passwd tokenvault >/dev/null || fail "purge left the tokenvault user"
! getent group tokenvault >/dev/null || fail "purge left the tokenvault group"
[ ! -e /etc/tokenvault/vault.toml ] || fail "purge left vault.toml"
[ ! -e /usr/bin/tokenvault ] || fail "purge left the binary"
[ ! -e /etc/systemd/system/multi-user.target.wants/tokenvault.service ] || fail "purge left the unit enabled"
[ -f /var/lib/tokenvault/canary-data ] || fail "purge removed the data directory"
[ -f /etc/tokenvault/passphrase ] || fail "purge removed a passphrase file the administrator added"
echo "ok: purge removed user, group, configuration and unit; kept the data directory and the passphrase"
rm -rf /var/lib/tokenvault /etc/tokenvault
trap - EXIT
echo "check-deb: all checks passed"
