# devicegate container image.
#
#   docker build -t devicegate .
#   docker run --rm -p 8080:8080 -e TV_APP_SECRET=... \
#     -v /etc/devicegate/devicegate.yaml:/etc/devicegate/devicegate.yaml:ro devicegate
#
# The image carries the example configurations in /etc/devicegate/ (from conf/). Mount your
# own devicegate.yaml over /etc/devicegate/devicegate.yaml: the shipped one is the local demo
# (it listens on 127.0.0.1:8080, unreachable from outside the container, and expects the demo
# IdP on 127.0.0.1:3000). In a container, listen on 0.0.0.0:8080. Secrets referenced as
# ${NAME} in the file come from the environment (-e / --env-file), never from the image.
#
# Validate a configuration without starting the server:
#   docker run --rm -e TV_APP_SECRET=x -v $PWD/my.yaml:/etc/devicegate/devicegate.yaml:ro \
#     devicegate --config /etc/devicegate/devicegate.yaml --check
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# cmake: native dependencies of the Pingora stack are built with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --locked: build exactly the versions in Cargo.lock. The cache mounts keep the registry and
# the target directory between builds; the binary is copied out of the cached target dir.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin devicegate \
 && install -D -m 0755 target/release/devicegate /out/devicegate

# ---- run -----------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc and CA certificates (pass-through TLS to the IdP uses the system
# store unless upstream.ca_file names a private CA's PEM bundle: mount it read-only), no shell,
# no package manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/devicegate /usr/local/bin/devicegate
COPY conf/ /etc/devicegate/
USER nonroot:nonroot
# The public listener (plain HTTP: terminate TLS in front of the container, or in devicegate
# itself with listen_tls). listen_tls on 8443: add -p 8443:8443 and mount the PEM certificate
# chain and key read-only (e.g. -v /etc/devicegate/tls:/etc/devicegate/tls:ro).
EXPOSE 8080
# No HEALTHCHECK: the distroless image has no shell, curl or wget to run one with. Set
# admin.listen (e.g. 0.0.0.0:9090) and point your orchestrator's probes at /healthz and /readyz.
ENTRYPOINT ["/usr/local/bin/devicegate"]
CMD ["--config", "/etc/devicegate/devicegate.yaml"]
