# The assay services image: the four services, the `assay` CLI, and assay-runner (the
# executor-launcher's local backend runs runners as child processes in its own Pod).
# Static musl binaries on a distroless base, run as a non-root user (65532, "nonroot"),
# matching the securityContext of deploy/k8s.
#
#   docker build -f deploy/docker/services.Dockerfile -t assay-services:dev .
#
# Not built in this repository's CI (no container engine there): `make images` builds it
# where docker or podman is installed.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
        -p assay-scheduler -p assay-trigger-watcher -p assay-executor-launcher \
        -p assay-result-aggregator -p assay-cli -p assay-runner \
    && mkdir /out \
    && cd target/x86_64-unknown-linux-musl/release \
    && cp assay assay-runner assay-scheduler assay-trigger-watcher \
          assay-executor-launcher assay-result-aggregator /out/

# static: no libc, ca-certificates and /etc/passwd with the nonroot user only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
ENV ASSAY_RUNNER=/usr/local/bin/assay-runner
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/assay"]
