# dnslens container image. Build: docker build -t dnslens .
# (Without a daemon, from a locally built binary: scripts/build-image.sh.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dnslens --bin dnslens \
 && strip target/release/dnslens

# The C runtime the binary links (glibc, libgcc), nothing else; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/dnslens /dnslens
USER 65532:65532
ENTRYPOINT ["/dnslens"]
CMD ["serve"]
