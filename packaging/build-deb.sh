#!/usr/bin/env bash
# Builds target/debian/tokenvault_<version>-1_<arch>.deb: the release binary,
# then manual pages and completions generated from it, then cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

cargo build --release --locked
bin=target/release/tokenvault
out=target/packaging
rm -rf "$out"
mkdir -p "$out/completions"
"$bin" manpages "$out/man"
"$bin" completions bash >"$out/completions/tokenvault.bash"
"$bin" completions zsh >"$out/completions/_tokenvault"
"$bin" completions fish >"$out/completions/tokenvault.fish"
cargo deb --no-build --locked
