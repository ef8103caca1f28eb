# Sourced by scripts/test.sh: starts the real servers the S3 + PostgreSQL
# suite runs against, on loopback, and stops them when the shell exits.
#
# - s3s-fs (crates.io): an S3-compatible server keeping objects as plain
#   files. Installed once into $HOME/.cache/raindrop/s3s (about 1.5 min).
# - PostgreSQL (Debian's `postgresql` package): a throwaway cluster in a
#   temp dir, fsync off (test data only).
#
# Exports RAINDROP_TEST_S3_{ENDPOINT,BUCKET,ROOT}, RAINDROP_TEST_PG_URI and
# the AWS_* variables that clients (Raindrop, PyIceberg, DuckDB) read.

S3S_VERSION=0.14.1
S3S_ROOT="${RAINDROP_S3S_ROOT:-$HOME/.cache/raindrop/s3s}"
S3S_BIN="$S3S_ROOT/bin/s3s-fs"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Fail early (before the long build) when PostgreSQL is missing.
services_require_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "PostgreSQL server not found: install it (Debian: apt-get install postgresql)" >&2
    return 1
  fi
}

services_install_s3s() {
  if [ ! -x "$S3S_BIN" ] || [ "$("$S3S_BIN" --version 2>/dev/null | awk '{print $2}')" != "$S3S_VERSION" ]; then
    echo "== installing s3s-fs $S3S_VERSION into $S3S_ROOT"
    # Its own build dir, not CARGO_TARGET_DIR: nothing of it is shared.
    # A debug build: 76 s instead of 215 s on 2 cores, and the S3 e2e suite
    # ran no slower against it (114 s vs 119 s).
    env -u CARGO_TARGET_DIR cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked \
      --debug --root "$S3S_ROOT" --quiet
  fi
}

services_start() {
  SERVICES_DIR="$(mktemp -d /tmp/raindrop-services.XXXXXX)"
  chmod 755 "$SERVICES_DIR"  # the postgres user must reach its data dir inside
  trap services_stop EXIT

  # S3: one bucket, objects under $SERVICES_DIR/s3/<bucket>/.
  local s3_port; s3_port="$(free_port)"
  export AWS_ACCESS_KEY_ID=raindrop-test AWS_SECRET_ACCESS_KEY=raindrop-test-secret
  export AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
  mkdir -p "$SERVICES_DIR/s3/raindrop"
  "$S3S_BIN" --host 127.0.0.1 --port "$s3_port" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
    "$SERVICES_DIR/s3" >"$SERVICES_DIR/s3s.log" 2>&1 &
  S3S_PID=$!
  export RAINDROP_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
  export RAINDROP_TEST_S3_BUCKET=raindrop RAINDROP_TEST_S3_ROOT="$SERVICES_DIR/s3"
  # Fault tests start (and kill) an S3 server of their own.
  export RAINDROP_TEST_S3S_BIN="$S3S_BIN"

  # PostgreSQL: postgres refuses to run as root, so root runs it as the
  # package's `postgres` user.
  local pgbin; pgbin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  local pg_port; pg_port="$(free_port)"
  local as=()
  mkdir -p "$SERVICES_DIR/pg"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$SERVICES_DIR/pg"
    as=(runuser -u postgres --)
  fi
  PG_CTL=("${as[@]}" "$pgbin/pg_ctl" -D "$SERVICES_DIR/pg/data")
  "${as[@]}" "$pgbin/initdb" -D "$SERVICES_DIR/pg/data" -A trust -U postgres -E UTF8 --no-sync >/dev/null
  "${PG_CTL[@]}" -w -s -l "$SERVICES_DIR/pg/log" -o "-c listen_addresses=127.0.0.1 -p $pg_port \
    -k $SERVICES_DIR/pg -c max_connections=400 -c fsync=off -c synchronous_commit=off \
    -c full_page_writes=off" start
  "$pgbin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c 'CREATE DATABASE raindrop' >/dev/null
  export RAINDROP_TEST_PG_URI="postgres://postgres@127.0.0.1:$pg_port/raindrop"
  export RAINDROP_TEST_PSQL="$pgbin/psql"
  # Fault tests start (and stop) a PostgreSQL cluster of their own.
  export RAINDROP_TEST_PG_BIN="$pgbin"

  for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "== services: S3 $RAINDROP_TEST_S3_ENDPOINT (s3s-fs), PostgreSQL $RAINDROP_TEST_PG_URI"
}

services_stop() {
  [ -n "${S3S_PID:-}" ] && kill "$S3S_PID" 2>/dev/null || true
  [ -n "${PG_CTL:-}" ] && "${PG_CTL[@]}" -w -s stop -m immediate 2>/dev/null || true
  [ -n "${SERVICES_DIR:-}" ] && rm -rf "$SERVICES_DIR"
}
