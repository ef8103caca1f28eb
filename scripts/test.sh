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
services_require_postgres

started=$SECONDS
phase() { echo "-- $1: $((SECONDS - started)) s since start"; }

# Everything the suites need besides Raindrop's own build, installed on
# first use: the S3 server, the Python venvs and the Node client.
VENV="${RAINDROP_VENV:-$HOME/.cache/raindrop/venv}"
DUCKDB_VENV="${RAINDROP_DUCKDB_VENV:-$HOME/.cache/raindrop/venv-duckdb}"
NODE_PREFIX="${RAINDROP_NODE_PREFIX:-$HOME/.cache/raindrop/node}"
install_clients() {
  local req=tests/clients/requirements.txt nodeps=tests/clients/requirements-nodeps.txt
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # Reinstall only when the requirements change.
  local stamp="$VENV/.requirements.sha256" want
  want="$(cat "$req" "$nodeps" | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "== installing the Python client suite into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    # Packages whose declared pins conflict with the above (see the file).
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$nodeps"
    echo "$want" > "$stamp"
  fi

  # DuckDB's Iceberg reader over S3 needs extension wheels that pin an older
  # DuckDB than the main venv's: a venv of its own (tests/clients/duckdb_iceberg.py).
  local duckdb_req=tests/clients/requirements-duckdb.txt
  if [ ! -x "$DUCKDB_VENV/bin/python" ]; then
    python3 -m venv "$DUCKDB_VENV"
  fi
  local duckdb_stamp="$DUCKDB_VENV/.requirements.sha256" duckdb_want
  duckdb_want="$(sha256sum "$duckdb_req" | cut -d' ' -f1)"
  if [ "$(cat "$duckdb_stamp" 2>/dev/null || true)" != "$duckdb_want" ]; then
    echo "== installing DuckDB with its Iceberg extensions into $DUCKDB_VENV"
    "$DUCKDB_VENV/bin/pip" install --quiet --disable-pip-version-check -r "$duckdb_req"
    echo "$duckdb_want" > "$duckdb_stamp"
  fi

  # The Node client for test_matrix.py, from the lockfile, outside the clone.
  # `npm install` rather than `npm ci`: the client lists a freebsd build that
  # was never published, and npm 11 ci rejects the lockfile npm itself wrote
  # for it (npm/cli#9846). With --no-save it still installs the locked versions.
  local node_stamp="$NODE_PREFIX/.package-lock.sha256" node_want
  node_want="$(cat tests/clients/node/package.json tests/clients/node/package-lock.json | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$node_stamp" 2>/dev/null || true)" != "$node_want" ]; then
    echo "== installing the Node client into $NODE_PREFIX"
    mkdir -p "$NODE_PREFIX"
    cp tests/clients/node/package.json tests/clients/node/package-lock.json "$NODE_PREFIX/"
    npm install --prefix "$NODE_PREFIX" --no-save --no-audit --no-fund --loglevel=error
    echo "$node_want" > "$node_stamp"
  fi
}
# The S3 server is compiled: before the build, not beside it (on 2 cores,
# compiling s3s-fs alongside the test targets took 492 s where one after
# the other took 319 s + 100 s).
echo "== S3 server (installed on first use)"
services_install_s3s
phase "S3 server ready"

# The client packages are mostly downloads and unpacking: they install in
# the background while cargo compiles the test targets, and the tests start
# once both are done. A failed install is reported then, with its log.
INSTALL_LOG="$(mktemp /tmp/raindrop-install.XXXXXX)"
install_clients >"$INSTALL_LOG" 2>&1 &
install_pid=$!
# A failed build stops the installs too (pip and npm are the subshell's children).
trap 'pkill -P "$install_pid" 2>/dev/null; kill "$install_pid" 2>/dev/null || true' EXIT

echo "== cargo test --release: building the test targets"
# The two test targets, each a workspace crate of its own built at
# opt-level 0 (see the root Cargo.toml): `unit` (src/'s #[cfg(test)]
# modules, tests/unit) and `e2e` (tests/e2e, against the library at 3).
# Not the 5 benchmark binaries (4 min of compiling and linking here):
# `cargo clippy --all-targets` checks that they build, and they are run
# with `cargo bench`.
cargo test --release --locked --workspace --tests --no-run
# The server binary itself, which `cargo test` does not build for another
# package's tests: the e2e process tests and the client suite start it (a
# stale one from an earlier build would test old code: tests/e2e/common.rs
# refuses it).
cargo build --release --locked --bin raindrop
phase "test targets built"

if ! wait "$install_pid"; then
  cat "$INSTALL_LOG"
  echo "installing the client suites failed (log above)" >&2
  exit 1
fi
cat "$INSTALL_LOG"
rm -f "$INSTALL_LOG"
phase "client suites ready"

# On S3 + PostgreSQL the e2e tests mostly wait on the servers, so four at a
# time finish sooner than one per core: 75 s instead of 122 s here. The
# local suite is CPU-bound and keeps cargo's default, one per core.
S3_TEST_THREADS="${RAINDROP_S3_TEST_THREADS:-4}"

echo "== cargo test --release (SQLite catalog, local warehouse)"
cargo test --release --locked --workspace --tests
phase "Rust tests, local"

services_start
echo "== cargo test --release -p raindrop-e2e (PostgreSQL catalog, S3 warehouse)"
RAINDROP_TEST_BACKEND=s3pg cargo test --release --locked -p raindrop-e2e --test e2e -- --test-threads "$S3_TEST_THREADS"
phase "Rust e2e, S3 + PostgreSQL"

echo "== Client suite (Python, Node)"
export RAINDROP_DUCKDB_PYTHON="$DUCKDB_VENV/bin/python"
export RAINDROP_NODE_MODULES="$NODE_PREFIX/node_modules"
export RAINDROP_BIN="$TARGET_DIR/release/raindrop"
"$VENV/bin/python" -m pytest -q tests/clients
phase "client suite"
