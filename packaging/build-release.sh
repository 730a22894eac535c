#!/usr/bin/env bash
# The release build, shared by the .deb (packaging/build-deb.sh) and the
# container (Dockerfile): the binary, then the manual pages and shell
# completions generated from it into target/packaging/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
bin=target/release/tokenvault
out=target/packaging
rm -rf "$out"
mkdir -p "$out/completions"
"$bin" manpages "$out/man"
"$bin" completions bash >"$out/completions/tokenvault.bash"
"$bin" completions zsh >"$out/completions/_tokenvault"
"$bin" completions fish >"$out/completions/tokenvault.fish"
