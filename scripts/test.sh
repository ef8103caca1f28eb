#!/usr/bin/env bash
# Runs every test: Rust unit + end-to-end tests, then the Python client suite
# (real ADBC Flight SQL driver, PyArrow Flight, PyIceberg, DuckDB) against the
# real server binary. Installs the Python packages into a venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/raindrop/target}"

echo "== cargo test"
cargo test --locked --all-targets

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
cargo build --locked --bin raindrop
export RAINDROP_BIN="$CARGO_TARGET_DIR/debug/raindrop"
"$VENV/bin/python" -m pytest -q tests/clients
