#!/usr/bin/env bash
# Runs every test: Rust unit + end-to-end tests on the embedded setup (SQLite
# catalog, local warehouse), the end-to-end tests again on S3 + PostgreSQL
# (real s3s-fs and PostgreSQL servers, see scripts/services.sh), then the
# client suite (real ADBC Flight SQL driver, PyArrow Flight, PyIceberg,
# DuckDB, and the third-party matrix: flightsql-dbapi, sqlalchemy-adbc,
# pandas, polars, a Node client) against the real server binary. Installs
# the Python packages into a venv, the Node packages into a cache directory
# and the S3 server into $HOME/.cache on first use; PostgreSQL comes from
# the system (Debian: apt-get install postgresql).
#
# Builds with --release, like `cargo run --release -- demo`, into the same
# target directory (./target unless CARGO_TARGET_DIR says otherwise): after
# the demo, only Raindrop's own test targets compile here.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# Fail before the long build, not after it.
if ! command -v npm >/dev/null; then
  echo "npm not found: install Node.js (Debian: apt-get install nodejs npm) for the client matrix" >&2
  exit 1
fi
source scripts/services.sh
services_check

echo "== cargo test --release (SQLite catalog, local warehouse)"
# Unit tests, the binary and the e2e suite; not the 4 benchmark binaries
# (4 min of compiling and linking here): `cargo clippy --all-targets`
# checks that they build, and they are run with `cargo bench`.
cargo test --release --locked --lib --bins --tests

services_start
echo "== cargo test --release --test e2e (PostgreSQL catalog, S3 warehouse)"
RAINDROP_TEST_BACKEND=s3pg cargo test --release --locked --test e2e

echo "== Client suite (Python, Node)"
VENV="${RAINDROP_VENV:-$HOME/.cache/raindrop/venv}"
REQ=tests/clients/requirements.txt
NODEPS=tests/clients/requirements-nodeps.txt
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# Reinstall only when the requirements change.
STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$REQ" "$NODEPS" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  # Packages whose declared pins conflict with the above (see the file).
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$NODEPS"
  echo "$WANT" > "$STAMP"
fi

# DuckDB's Iceberg reader over S3 needs extension wheels that pin an older
# DuckDB than the main venv's: a venv of its own (tests/clients/duckdb_s3.py).
DUCKDB_VENV="${RAINDROP_DUCKDB_VENV:-$HOME/.cache/raindrop/venv-duckdb}"
DUCKDB_REQ=tests/clients/requirements-duckdb.txt
if [ ! -x "$DUCKDB_VENV/bin/python" ]; then
  python3 -m venv "$DUCKDB_VENV"
fi
DUCKDB_STAMP="$DUCKDB_VENV/.requirements.sha256"
DUCKDB_WANT="$(sha256sum "$DUCKDB_REQ" | cut -d' ' -f1)"
if [ "$(cat "$DUCKDB_STAMP" 2>/dev/null || true)" != "$DUCKDB_WANT" ]; then
  "$DUCKDB_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$DUCKDB_REQ"
  echo "$DUCKDB_WANT" > "$DUCKDB_STAMP"
fi
export RAINDROP_DUCKDB_PYTHON="$DUCKDB_VENV/bin/python"

# The Node client for test_matrix.py, from the lockfile, outside the clone.
# `npm install` rather than `npm ci`: the client lists a freebsd build that
# was never published, and npm 11 ci rejects the lockfile npm itself wrote
# for it (npm/cli#9846). With --no-save it still installs the locked versions.
NODE_PREFIX="${RAINDROP_NODE_PREFIX:-$HOME/.cache/raindrop/node}"
NODE_STAMP="$NODE_PREFIX/.package-lock.sha256"
NODE_WANT="$(cat tests/clients/node/package.json tests/clients/node/package-lock.json | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$NODE_STAMP" 2>/dev/null || true)" != "$NODE_WANT" ]; then
  mkdir -p "$NODE_PREFIX"
  cp tests/clients/node/package.json tests/clients/node/package-lock.json "$NODE_PREFIX/"
  npm install --prefix "$NODE_PREFIX" --no-save --no-audit --no-fund --loglevel=error
  echo "$NODE_WANT" > "$NODE_STAMP"
fi
export RAINDROP_NODE_MODULES="$NODE_PREFIX/node_modules"
cargo build --release --locked --bin raindrop
export RAINDROP_BIN="$TARGET_DIR/release/raindrop"
"$VENV/bin/python" -m pytest -q tests/clients
