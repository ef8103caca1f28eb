#!/usr/bin/env bash
# Runs every test: Rust unit + end-to-end tests, then the Python client suite
# (real ADBC Flight SQL driver, PyArrow Flight, PyIceberg, DuckDB) against the
# real server binary. Installs the Python packages into a venv on first use.
#
# Builds with --release, like `cargo run --release -- demo`, into the same
# target directory (./target unless CARGO_TARGET_DIR says otherwise): after
# the demo, only Raindrop's own test targets compile here.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

echo "== cargo test --release"
cargo test --release --locked --all-targets

echo "== Python client suite"
VENV="${RAINDROP_VENV:-$HOME/.cache/raindrop/venv}"
REQ=tests/clients/requirements.txt
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# Reinstall only when the requirements change.
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  echo "$WANT" > "$STAMP"
fi
cargo build --release --locked --bin raindrop
export RAINDROP_BIN="$TARGET_DIR/release/raindrop"
"$VENV/bin/python" -m pytest -q tests/clients
