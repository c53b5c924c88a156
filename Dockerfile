# One image for every service: build the workspace, then copy the binaries into a slim runtime.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin quantum
COPY --from=build /src/target/release/quantum-intent-bridge /src/target/release/quantum-intent-executor \
     /src/target/release/quantum-ledger /src/target/release/quantumctl /usr/local/bin/
USER quantum
# The services' HTTP endpoints (/metrics, /healthz, /readyz).
EXPOSE 9101 9102 9103
