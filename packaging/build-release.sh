#!/usr/bin/env bash
# The release build, shared by the .deb (packaging/build-deb.sh) and the
# container (Dockerfile): the binary, then the manual pages and shell
# completions generated from it, and the CycloneDX SBOM, into
# target/packaging/.
#
# The build is reproducible (packaging/check-reproducible.sh proves it):
# SOURCE_DATE_EPOCH is the commit's time, and the source and cargo home
# paths are remapped so that neither the checkout's location nor the
# builder's home ends up in the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

source packaging/release-env.sh

bin=target/release/tokenvault
if [ -n "${TOKENVAULT_PACKAGE_BINARY:-}" ]; then
  # CI only: package the binary the test run already built (stripped)
  # instead of compiling everything again with the release profile. The
  # files, modes, unit and SBOM checked are the same; the release build
  # itself is exercised by packaging/check-reproducible.sh.
  mkdir -p target/release
  strip -o "$bin" "$TOKENVAULT_PACKAGE_BINARY"
  echo "build-release: packaging $TOKENVAULT_PACKAGE_BINARY, not a release build" >&2
else
  cargo build --release --locked
fi
out=target/packaging
rm -rf "$out"
mkdir -p "$out/completions"
"$bin" manpages "$out/man"
"$bin" completions bash >"$out/completions/tokenvault.bash"
"$bin" completions zsh >"$out/completions/_tokenvault"
"$bin" completions fish >"$out/completions/tokenvault.fish"

# The SBOM: every crate compiled into the binary for this target, with
# its version, licence, crates.io checksum and package URL.
bash packaging/tools.sh cargo-cyclonedx
cargo cyclonedx --format json --spec-version 1.5 --no-build-deps \
  --override-filename tokenvault.cdx -q
# The vault's own component is named by its checkout path (and, when the
# directory is not called "tokenvault", cargo adds the package name); use
# the binary's fixed path and the long form, so the SBOM is reproducible.
sed -e "s|path+file://$PWD#\([0-9]\)|path+file://$RELEASE_SOURCE_PATH#tokenvault@\1|g" \
  -e "s|path+file://$PWD#|path+file://$RELEASE_SOURCE_PATH#|g" tokenvault.cdx.json >"$out/tokenvault.cdx.json"
rm tokenvault.cdx.json
if grep -q "$PWD" "$out/tokenvault.cdx.json"; then
  echo "the SBOM names the checkout path" >&2
  exit 1
fi
