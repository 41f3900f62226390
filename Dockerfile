# syntax=docker/dockerfile:1
# Build: docker build -t token-vendor .
# Run:   docker run -p 8080:8080 -e CORTI_ENVIRONMENT=eu ... token-vendor   (see docs/deploy.md)
#
# No Docker engine runs in CI: `scripts/image-build.sh check` replays this file's build
# stage outside Docker (same COPYs into an empty directory, same RUN steps) and runs the
# result as the runtime stage would (its USER, ENV and HEALTHCHECK). Keep the build stage
# to ARG, ENV, WORKDIR, COPY and `RUN scripts/image-build.sh ...` lines so the replay stays
# complete; `scripts/check-toolchain.sh` checks RUST_VERSION against the locked crates.

# The one place the image's Rust toolchain is chosen (a published rust:*-slim-bookworm tag).
ARG RUST_VERSION=1.94.1

FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG CARGO_AUDITABLE_VERSION=0.7.7
WORKDIR /src
COPY scripts/image-build.sh ./scripts/image-build.sh
RUN scripts/image-build.sh tools
# Dependencies in their own layer: built against a stand-in crate, so source edits
# reuse this layer and rebuild only token-vendor itself.
COPY Cargo.toml Cargo.lock ./
RUN scripts/image-build.sh deps
COPY src ./src
COPY migrations ./migrations
COPY openapi.yaml ./
COPY clients/js/index.js ./clients/js/index.js
# The commit `token_vendor_build_info` reports (`unknown` when not given).
ARG VCS_REF=unknown
ENV TOKEN_VENDOR_COMMIT=${VCS_REF}
RUN scripts/image-build.sh app /out

FROM gcr.io/distroless/cc-debian12
ARG RUST_VERSION
# docker build --build-arg VCS_REF="$(git rev-parse HEAD)" .
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="token-vendor" \
      org.opencontainers.image.description="Vends limited-scope Corti tokens to signed-in browsers without exposing the client secret" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12" \
      org.opencontainers.image.documentation="docs/deploy.md" \
      io.token-vendor.rust-version="${RUST_VERSION}"
COPY --from=build /out/token-vendor /usr/local/bin/token-vendor
# The SQLite audit file's directory, owned by the service user (mount a volume here).
COPY --from=build --chown=10001:10001 /out/data /var/lib/token-vendor
USER 10001:10001
WORKDIR /var/lib/token-vendor
ENV LISTEN_ADDR=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///var/lib/token-vendor/audit.db \
    RUST_LOG=info
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/token-vendor", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/token-vendor"]
CMD ["serve"]
