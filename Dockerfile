# syntax=docker/dockerfile:1
# The operator's image, for users with a container engine:
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse --short=12 HEAD) -t tenant-operator .
# Without one, scripts/image builds an image of the same shape with umoci and skopeo (see README).

# --- build: the release binary ----------------------------------------------------------------
FROM rust:1.95-bookworm AS build
ARG REVISION=unknown
WORKDIR /src
COPY . .
# The revision goes into `tenant-operator --version` (there is no .git in the build context).
RUN TENANT_OPERATOR_REVISION="${REVISION}" cargo build --release --locked -p tenant-operator \
 && install -m 0755 target/release/tenant-operator /tenant-operator

# --- runtime: glibc, CA certificates, a non-root user, no shell -------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.source="https://github.com/molecule-ai/tenant-operator" \
      org.opencontainers.image.title="tenant-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /tenant-operator /usr/local/bin/tenant-operator
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tenant-operator"]
CMD ["run"]
