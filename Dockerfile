# Multi-stage build of image-service: a Rust builder, then a small runtime
# image running as a non-root user. Built with the `heif` feature, so HEIC,
# HEIF and AVIF get variants: libheif is compiled from the sources
# libheif-sys embeds and linked to Debian's HEVC (libde265) and AV1 (dav1d)
# decoders. No encoder is installed in the builder, so none is linked.
# Also built with `libjpeg-turbo`: JPEG variants decoded by libjpeg-turbo's
# SIMD code (nasm assembles it), linked statically.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake libde265-dev libdav1d-dev nasm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
RUN cargo build --release --locked --features heif,libjpeg-turbo --bin image-service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates libde265-0 libdav1d6 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/image-service /usr/local/bin/image-service
USER 65532:65532
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/image-service"]
