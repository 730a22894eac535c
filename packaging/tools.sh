#!/usr/bin/env bash
# Installs the pinned packaging and supply-chain tools that are missing:
#   cargo-deb        builds the .deb (packaging/build-deb.sh)
#   cargo-cyclonedx  writes the CycloneDX SBOM shipped in the .deb and image
#   cargo-deny       checks advisories, licences, duplicates and sources
#                    (deny.toml; run by .ci/run)
#
#   bash packaging/tools.sh                 # all three
#   bash packaging/tools.sh cargo-cyclonedx # only the ones named
#
# They are built from crates.io with --locked at the versions below. The
# build is unoptimised (opt-level 0, one shared target directory): the
# tools run for seconds, and this halves the time CI spends compiling them.
set -euo pipefail

declare -A PINNED=(
  [cargo-deb]=3.8.0
  [cargo-cyclonedx]=0.5.9
  [cargo-deny]=0.20.2
)
TOOLS=(cargo-deb cargo-cyclonedx cargo-deny)
if [ "$#" -gt 0 ]; then TOOLS=("$@"); fi

wanted=()
for tool in "${TOOLS[@]}"; do
  version="${PINNED[$tool]:?unknown tool $tool}"
  # `cargo deb --version` prints "cargo-deb 3.8.0"; the others alike.
  if ! cargo "${tool#cargo-}" --version 2>/dev/null | grep -qw "$version"; then
    wanted+=("$tool@$version")
  fi
done
[ "${#wanted[@]}" -eq 0 ] && exit 0

echo "tools: installing ${wanted[*]}"
CARGO_PROFILE_RELEASE_OPT_LEVEL=0 \
CARGO_PROFILE_RELEASE_LTO=off \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
CARGO_PROFILE_RELEASE_DEBUG=false \
CARGO_PROFILE_RELEASE_STRIP=true \
CARGO_TARGET_DIR="${TMPDIR:-/tmp}/tokenvault-tools-target" \
  cargo install --locked "${wanted[@]}"
