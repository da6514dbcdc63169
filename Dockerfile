# dnslens container image. Build: docker build -t dnslens .
# (Without a daemon, from a locally built binary: scripts/build-image.sh.)
# Base images pinned by digest: a rebuild gets the bytes that were reviewed, not whatever
# the tag points at that day. To move a pin, read the tag's current digest
#   skopeo inspect --format '{{.Digest}}' docker://docker.io/library/rust:1-bookworm
# review what changed, and replace the digest. (These were pinned on 2026-12-07 from the
# digests public Dockerfiles pin, on a machine without registry access: re-read them with
# skopeo before the first release build.)
FROM rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dnslens --bin dnslens \
 && strip target/release/dnslens

# The C runtime the binary links (glibc, libgcc) and the CA bundle, nothing else; user
# 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=build /src/target/release/dnslens /dnslens
USER 65532:65532
ENTRYPOINT ["/dnslens"]
CMD ["serve"]
