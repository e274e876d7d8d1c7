# syntax=docker/dockerfile:1
# The operator image: a static-enough Rust binary (rustls on ring, no OpenSSL) on
# distroless, running as the unprivileged "nonroot" user (65532) that the Helm chart's
# securityContext expects.
#
#   docker build -t acs-identity-operator:dev .
#
# The build command is the one CI runs: cargo build --release --locked --bin acs-identity-operator
# The image also carries the kubectl-acs CLI on PATH (the example workload runs it).
# `make image` builds the same image offline, FROM scratch, from this file's final stage
# (hack/image/build.sh reads it: the binaries, LABEL, ENV, USER, EXPOSE, ENTRYPOINT, CMD).

# Pinned to a minor release so that rebuilding the same commit gives the same compiler;
# bump it together with the toolchain CI uses (Cargo.toml rust-version is the floor).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# 1. Dependencies only, against a stub crate with the real manifest and lockfile: this
#    layer is rebuilt when Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin \
    && echo "" > src/lib.rs \
    && echo "fn main() {}" > src/bin/acs-identity-operator.rs \
    && echo "fn main() {}" > src/bin/kubectl-acs.rs \
    && cargo build --release --locked --bin acs-identity-operator --bin kubectl-acs \
    && rm -rf src

# 2. The operator itself. COPY keeps the sources' old mtimes, which cargo could take for
#    "older than the stub build"; touching them and dropping the stub's own artifacts makes
#    cargo rebuild the crate for certain.
COPY src ./src
RUN find src -name '*.rs' -exec touch {} + \
    && rm -rf target/release/.fingerprint/acs-identity-operator-* \
              target/release/deps/acs_identity_operator-* \
              target/release/deps/libacs_identity_operator-* \
              target/release/deps/kubectl_acs-* \
    && cargo build --release --locked --bin acs-identity-operator --bin kubectl-acs \
    && cp target/release/acs-identity-operator target/release/kubectl-acs /

# distroless/cc: glibc, libgcc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="acs-identity-operator" \
      org.opencontainers.image.description="Kubernetes operator for Azure Communication Services identities and access tokens" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /acs-identity-operator /acs-identity-operator
COPY --from=builder /kubectl-acs /usr/local/bin/kubectl-acs
# distroless' own PATH, spelled out so that the FROM-scratch build of `make image` has it.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Numeric, so that runAsNonRoot can verify it without resolving a user name.
USER 65532:65532
# Metrics, /healthz and /readyz (the chart's default --metrics-addr port).
EXPOSE 8080
ENTRYPOINT ["/acs-identity-operator"]
CMD ["run"]
