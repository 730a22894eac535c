#!/usr/bin/env bash
# Builds the release twice from one commit, in two fresh clones at
# different paths with their own target directories, and checks that the
# binary, the SBOM, the manual pages, the completions and the .deb are
# byte-identical. docs/reliability.md records a run.
#
#   bash packaging/check-reproducible.sh          # HEAD
#   bash packaging/check-reproducible.sh <commit>
#
# Takes two full release builds (25 to 40 minutes on 2 cores); not part of
# .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=$(git rev-parse "${1:-HEAD}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build() { # directory
  git clone -q --no-local "$PWD" "$1"
  git -C "$1" -c advice.detachedHead=false checkout -q "$commit"
  (cd "$1" && bash packaging/build-deb.sh) >"$1.log" 2>&1 \
    || { tail -30 "$1.log" >&2; echo "check-reproducible: build in $1 failed" >&2; exit 1; }
}

# Two paths of different lengths, so that an unremapped path changes the
# layout of the binary, not just a few bytes.
build "$work/one/tokenvault"
build "$work/second-builder/src/tokenvault-copy"

artifacts=(target/release/tokenvault target/packaging/tokenvault.cdx.json)
while IFS= read -r f; do artifacts+=("$f"); done < <(cd "$work/one/tokenvault" \
  && find target/packaging/man target/packaging/completions target/debian -type f -name '*.*' | sort)

status=0
echo "commit $commit"
for f in "${artifacts[@]}"; do
  a=$(sha256sum <"$work/one/tokenvault/$f" | cut -d' ' -f1)
  b=$(sha256sum <"$work/second-builder/src/tokenvault-copy/$f" | cut -d' ' -f1)
  if [ "$a" = "$b" ]; then
    echo "same      $a  $f"
  else
    echo "DIFFERENT $a $b  $f"
    status=1
  fi
done
# Neither checkout's path may appear in the binary.
for dir in "$work/one/tokenvault" "$work/second-builder/src/tokenvault-copy"; do
  if grep -qaF "$dir" "$dir/target/release/tokenvault"; then
    echo "the binary built in $dir contains that path"
    status=1
  fi
done
if [ "$status" -eq 0 ]; then
  echo "check-reproducible: ${#artifacts[@]} artifacts identical"
else
  echo "check-reproducible: FAIL" >&2
fi
exit "$status"
