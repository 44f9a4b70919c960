# Multi-stage build of image-service: a Rust builder, then a small runtime
# image running as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked --bin image-service

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/image-service /usr/local/bin/image-service
USER 65532:65532
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/image-service"]
