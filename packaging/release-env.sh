# Sourced from the repository root by packaging/build-release.sh (and by
# .ci/run, so that the crash loop's release build reuses the same compiled
# dependencies): the environment of a reproducible release build.
#   SOURCE_DATE_EPOCH  the commit's time (Cargo.lock's modification time
#                      outside git, as in a container build without .git)
#   RUSTFLAGS          the checkout and the cargo home remapped to fixed
#                      paths, so neither ends up in the binary
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y Cargo.lock)
fi
export SOURCE_DATE_EPOCH
# The fixed path the checkout is known by in the binary and the SBOM.
RELEASE_SOURCE_PATH=/build/tokenvault
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$PWD=$RELEASE_SOURCE_PATH --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
