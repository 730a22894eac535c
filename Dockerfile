# syntax=docker/dockerfile:1
#
# tokenvault container image.
#
#   docker build -t tokenvault \
#     --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct)" .
#   docker run -d --name tokenvault -p 8443:8443 \
#     -v /srv/tokenvault/vault.toml:/etc/tokenvault/vault.toml:ro \
#     -v /srv/tokenvault/tls:/etc/tokenvault/tls:ro \
#     -v /srv/tokenvault/passphrase:/run/secrets/passphrase:ro \
#     -e TOKENVAULT_KEYS__PASSPHRASE_FILE=/run/secrets/passphrase \
#     -v tokenvault-data:/var/lib/tokenvault \
#     --read-only --cap-drop ALL --security-opt no-new-privileges \
#     tokenvault
#
# Mounted files must be readable by uid 65532; the passphrase file and the
# TLS key must be mode 600 (tokenvault refuses group- or world-readable
# secrets). Initialise once with the same mounts and `init` as the command.
# See docs/operations.md.

# --- build: the same script CI runs for the .deb (packaging/build-release.sh)
FROM rust:1.95-bookworm AS build
# The commit's time, for a reproducible binary and SBOM (without it the
# build uses Cargo.lock's modification time).
ARG SOURCE_DATE_EPOCH
WORKDIR /src
COPY . .
RUN bash packaging/build-release.sh \
 && install -d -m 0700 /out/data

# --- runtime: glibc and nothing else; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tokenvault" \
      org.opencontainers.image.description="On-premises tokenization vault" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/tokenvault /usr/bin/tokenvault
COPY --from=build /src/vault.toml.example /usr/share/doc/tokenvault/vault.toml.example
# The CycloneDX SBOM of the binary, as in the .deb.
COPY --from=build /src/target/packaging/tokenvault.cdx.json /usr/share/doc/tokenvault/sbom/tokenvault.cdx.json
COPY --from=build --chown=65532:65532 --chmod=0700 /out/data /var/lib/tokenvault
# The distroless "nonroot" user, by number so that runtimes can check it.
USER 65532:65532
ENV TOKENVAULT_CONFIG=/etc/tokenvault/vault.toml
VOLUME /var/lib/tokenvault
EXPOSE 8443
# Asks /readyz on the configured listen address (over TLS, trusting exactly
# the configured certificate); exit 1 when not ready.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD ["/usr/bin/tokenvault", "healthcheck"]
ENTRYPOINT ["/usr/bin/tokenvault"]
CMD ["serve"]
