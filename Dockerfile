# One image for every service. Users with a registry build the `runtime` target (compose.yaml
# does): the workspace is compiled in the `build` stage. Offline, `runtime-prebuilt` takes
# binaries built on the host instead (scripts/compose-test.sh, deploy/compose/offline.yaml).
# Both derive from `runtime-base`, the one definition of what goes into the image.
#
# The stages are in this order so that the classic builder, which builds every stage up to its
# target, never needs the rust image for `runtime-prebuilt`.
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${RUNTIME_BASE} AS runtime-base
COPY deploy/image/setup.sh /usr/local/lib/quantum-image-setup.sh
RUN sh /usr/local/lib/quantum-image-setup.sh && rm /usr/local/lib/quantum-image-setup.sh
# The services' HTTP endpoints (/metrics, /healthz, /readyz).
EXPOSE 9101 9102 9103

# Binaries built on the host, staged in .compose-bin/ (scripts/compose-test.sh does this).
FROM runtime-base AS runtime-prebuilt
COPY .compose-bin/quantum-intent-bridge .compose-bin/quantum-intent-executor \
     .compose-bin/quantum-ledger .compose-bin/quantumctl /usr/local/bin/
USER quantum

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins

FROM runtime-base AS runtime
COPY --from=build /src/target/release/quantum-intent-bridge /src/target/release/quantum-intent-executor \
     /src/target/release/quantum-ledger /src/target/release/quantumctl /usr/local/bin/
USER quantum
