#!/usr/bin/env bash
# Builds target/debian/tokenvault_<version>-1_<arch>.deb: the shared release
# build (binary, manual pages, completions, SBOM), then cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

bash packaging/tools.sh cargo-deb

bash packaging/build-release.sh
cargo deb --no-build --locked
