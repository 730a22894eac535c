#!/usr/bin/env bash
# Builds target/debian/tokenvault_<version>-1_<arch>.deb: the shared release
# build (binary, manual pages, completions), then cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

bash packaging/build-release.sh
cargo deb --no-build --locked
