# gpuproxyd container image. Build: docker build -t gpuproxyd .
# Run:
#   docker run --rm -p 8443:8443 -p 9090:9090 --ulimit nofile=1048576:1048576 \
#     -v /etc/gpuproxyd/tls:/etc/gpuproxyd/tls:ro --env-file secrets.env gpuproxyd
# secrets.env holds DATABASE_URL (DATABASE_READ_URL), REDIS_URL, JWT_SECRET, VASTAI_API_KEY, IONET_API_KEY (never baked
# into the image). The host's kernel settings still matter: see sysctl/ and `gpuproxyd doctor`.

# --- build: the Rust toolchain, the locked dependency set, a release binary
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# embedded at build time: the OpenAPI document and doctor's recommendations
COPY openapi ./openapi
COPY sysctl ./sysctl
RUN cargo build --release --locked --bin gpuproxyd \
 && install -D -m 0755 target/release/gpuproxyd /out/gpuproxyd

# --- run: slim Debian, the binary and its config only, an unprivileged user
FROM debian:bookworm-slim
# the daemon carries its own TLS roots (webpki-roots); nothing else is installed
RUN useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin gpuproxyd
COPY --from=build /out/gpuproxyd /usr/local/bin/gpuproxyd
COPY config/gpuproxyd.toml /etc/gpuproxyd/gpuproxyd.toml
# the API on all interfaces inside the container; the metrics listener (with /stats, which lists
# the top client addresses) on loopback only: the health check runs inside the container. To let
# Prometheus scrape it, set GPUPROXY_SERVER_METRICS_LISTEN to the container's address on a
# private network (never a published port). Certificate and key are mounted here.
ENV GPUPROXY_SERVER_HTTPS_LISTEN=0.0.0.0:8443 \
    GPUPROXY_SERVER_METRICS_LISTEN=127.0.0.1:9090 \
    GPUPROXY_SERVER_TLS_CERT=/etc/gpuproxyd/tls/server.crt \
    GPUPROXY_SERVER_TLS_KEY=/etc/gpuproxyd/tls/server.key
USER gpuproxyd
# 8443: the HTTPS API (HTTP/2 and HTTP/1.1). 9090 (/metrics, /health, /stats, plain HTTP) is not
# exposed: loopback unless GPUPROXY_SERVER_METRICS_LISTEN names a private address
EXPOSE 8443
# liveness over the metrics listener, with bash's /dev/tcp (no curl in the image)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# the daemon is PID 1: it handles SIGTERM (drain) and SIGHUP (certificate reload) itself
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gpuproxyd"]
CMD ["serve", "--config", "/etc/gpuproxyd/gpuproxyd.toml"]
