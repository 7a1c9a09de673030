# syntax=docker/dockerfile:1
#
# kommo-sync and the bundled Kommo simulator in one small image.
#
#   docker build -t kommo-sync:local .
#   docker run --rm kommo-sync:local --help
#
# docker-compose.yml builds this image for every service (see docs/install.md).

# ---- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# The whole workspace: Cargo needs every member (kommo-sim), the bench target named in
# Cargo.toml, the migrations (embedded with sqlx::migrate!) and config/default.toml
# (embedded with include_str!). .dockerignore keeps target/ and .git out.
COPY . .

# --workspace: the root package is also the workspace's only default member, so a plain
# `--bins` would build kommo-sync alone. --locked: exactly the versions in Cargo.lock.
# The cache mounts keep the registry and target/ between builds (BuildKit); the binaries
# are copied out of target/ in the same step because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/kommo-sync target/release/kommo-sim /out/

# ---- runtime ----------------------------------------------------------------------------
# Same Debian release as the builder, so the binaries find the glibc they were linked with.
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="kommo-sync" \
      org.opencontainers.image.description="Mirrors a Kommo CRM account into PostgreSQL, incrementally and politely" \
      org.opencontainers.image.licenses="MIT"

# TLS (Kommo over HTTPS, PostgreSQL with sslmode) is rustls with the Mozilla roots built into
# the binary; ca-certificates keeps the usual system store in place for anything that looks
# there. Nothing else is installed: no shell tools beyond the base image, no compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid, so volumes and file permissions are predictable.
RUN groupadd --system --gid 10001 kommo \
 && useradd --system --uid 10001 --gid kommo --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin kommo

COPY --from=builder /out/kommo-sync /out/kommo-sim /usr/local/bin/

USER 10001:10001

# Logs as JSON lines (the log driver keeps them); override with KOMMO_SYNC__LOG__FORMAT=text.
ENV KOMMO_SYNC__LOG__FORMAT=json

# 9187: the side server (/healthz, /readyz, /metrics) when KOMMO_SYNC__SERVER__LISTEN is set.
# 8099: kommo-sim, when the image runs the simulator (docker-compose profile `demo`).
EXPOSE 9187 8099

# The daemon stops on SIGTERM: it finishes or abandons the page in flight and exits 0
# within about 10 s. Give it more than that (compose: stop_grace_period: 15s).
STOPSIGNAL SIGTERM

ENTRYPOINT ["kommo-sync"]
CMD ["run"]
