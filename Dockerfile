# The indexswarm sidecar image: the binary, the C library it links, CA
# certificates and a health-check probe, on an empty base; a non-root user;
# /data a volume. 15 MB (README, "Deploy").
#
# From source (needs a registry for rust: and debian: images):
#   docker build -t indexswarm .
#   podman build --format docker -t indexswarm .      # docker format keeps HEALTHCHECK
#
# From binaries built on the host (glibc 2.36 or older, e.g. Debian 12), no
# Rust image needed; only debian:bookworm-slim:
#   cargo build --release --bin indexswarm --example healthcheck
#   podman build --format docker --target runtime -t indexswarm .
# BINARY and HEALTHCHECK_BINARY (build arguments) name other files under
# target/; they are stripped on the way in.
#
# Run: docker run --rm indexswarm                      (prints --help)
#      docker run -v idx:/data -p 7070:7070 -p 6881:6881 indexswarm master --snapshots-dir /data/snapshots

# Bookworm for both: the binary must link the glibc (2.36) that the rootfs
# stage copies. Cargo.lock needs Rust 1.88 or newer (time 0.3.55).
ARG RUST_IMAGE=rust:1.89-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------- rootfs
# Everything the runtime needs except the binaries, assembled in /rootfs:
# CA certificates; the dynamic loader and the libraries a Rust binary links
# (libc, libm, libgcc_s) at the paths Debian has them, so the loader finds
# them without an ld.so.cache (globs keep this working on arm64; /lib is
# usrmerge's link to usr/lib); a user; /data and /tmp. binutils is for
# `strip` in the host-binaries stage and stays out of the image.
FROM ${DEBIAN_IMAGE} AS rootfs
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates binutils; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /rootfs/etc/ssl/certs /rootfs/usr/local/bin /rootfs/data /rootfs/tmp; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/; \
    chmod 1777 /rootfs/tmp; \
    libdir="$(dirname "$(readlink -f /lib/*-linux-gnu*/libc.so.6)")"; \
    mkdir -p "/rootfs$libdir"; \
    case "$libdir" in /usr/lib/*) ln -s usr/lib /rootfs/lib ;; esac; \
    for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do cp -L "$libdir/$lib" "/rootfs$libdir/"; done; \
    for ld in /lib64/ld-linux-*.so.* /lib/ld-linux-*.so.*; do \
        [ -e "$ld" ] || continue; mkdir -p "/rootfs$(dirname "$ld")"; cp -L "$ld" "/rootfs$ld"; \
    done; \
    echo 'indexswarm:x:10001:10001:indexswarm:/data:/nonexistent' > /rootfs/etc/passwd; \
    echo 'indexswarm:x:10001:' > /rootfs/etc/group; \
    echo 'hosts: files dns' > /rootfs/etc/nsswitch.conf; \
    chown 10001:10001 /rootfs/data

# ---------------------------------------------------------------- builder
# The probe uses the standard library only, so rustc builds it alone:
# `cargo build --example` would also build every dev-dependency (tantivy).
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY examples examples
COPY integration integration
RUN set -eux; \
    cargo build --release --locked --bin indexswarm; \
    mkdir /out; \
    rustc --edition 2021 -C opt-level=3 -o /tmp/healthcheck examples/healthcheck.rs; \
    strip -o /out/indexswarm target/release/indexswarm; \
    strip -o /out/indexswarm-healthcheck /tmp/healthcheck

# ---------------------------------------------------------------- host binaries
# The `--target runtime` path: binaries built on the host, stripped here.
FROM rootfs AS host-binaries
ARG BINARY=target/release/indexswarm
ARG HEALTHCHECK_BINARY=target/release/examples/healthcheck
COPY ${BINARY} /in/indexswarm
COPY ${HEALTHCHECK_BINARY} /in/indexswarm-healthcheck
RUN mkdir /out && strip -o /out/indexswarm /in/indexswarm \
    && strip -o /out/indexswarm-healthcheck /in/indexswarm-healthcheck

# ---------------------------------------------------------------- base
FROM scratch AS base
COPY --from=rootfs /rootfs/ /
USER 10001:10001
WORKDIR /data
VOLUME /data
# indexswarm's own ports: master API + tracker, master peers, replica API,
# replica peers.
EXPOSE 7070 6881 7071 6882
# GET /healthz of the sidecar this container runs: the port of
# INDEXSWARM_MASTER_HTTP_LISTEN / INDEXSWARM_REPLICA_HTTP_LISTEN, else the
# default 7070 or 7071. When a config file moves the port, set
# INDEXSWARM_HEALTHCHECK_URL. Kubernetes ignores HEALTHCHECK (examples/k8s
# has probes), and so does podman unless built with --format docker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/indexswarm-healthcheck"]
ENTRYPOINT ["/usr/local/bin/indexswarm"]
CMD ["--help"]

# ---------------------------------------------------------------- runtime
# `--target runtime`: the image from host-built binaries.
FROM base AS runtime
COPY --from=host-binaries /out/ /usr/local/bin/

# ---------------------------------------------------------------- default
# The image from source (the last stage, built when no --target is given).
FROM base AS release
COPY --from=builder /out/ /usr/local/bin/
