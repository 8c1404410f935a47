# A tiny image holding only a static assay-runner, for the Pod backend (not built yet): a
# shard Pod's init container runs this image, whose entry point copies the binary into a
# shared emptyDir (the first argument, default /assay/bin); the test container then runs
# the runner from there, wrapping its own command.
#
#   docker build -f deploy/docker/runner.Dockerfile -t assay-runner:dev .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p assay-runner \
    && cp target/x86_64-unknown-linux-musl/release/assay-runner /assay-runner

# busybox (static, ~1 MiB) for the copy; the runner itself is static and needs nothing.
FROM busybox:1.37-musl
COPY --from=build /assay-runner /usr/local/bin/assay-runner
USER 65532:65532
# Copies the runner into the shared volume given as the first argument (default /assay/bin).
ENTRYPOINT ["/bin/sh", "-c", "dest=${1:-/assay/bin}; cp /usr/local/bin/assay-runner \"$dest/assay-runner\" && chmod 0555 \"$dest/assay-runner\" && echo \"assay-runner copied to $dest\"", "copy-runner"]
