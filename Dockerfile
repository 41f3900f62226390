# syntax=docker/dockerfile:1
# Build: docker build -t token-vendor .
# Run:   docker run -p 8080:8080 -e CORTI_ENVIRONMENT=eu ... token-vendor

FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY openapi.yaml ./
COPY clients ./clients
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/token-vendor

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/token-vendor --create-home token-vendor
COPY --from=build /src/target/release/token-vendor /usr/local/bin/token-vendor
USER 10001:10001
WORKDIR /var/lib/token-vendor
ENV LISTEN_ADDR=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///var/lib/token-vendor/audit.db \
    RUST_LOG=info
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/token-vendor"]
CMD ["serve"]
