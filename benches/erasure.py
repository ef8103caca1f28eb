"""Erasure cost on a demo table: time, files read and rewritten, bytes written.

Not run by the test command. Reproduce (release binary built):

    raindrop demo --data-dir /tmp/erase10m --events 10000000 --projects 50
    raindrop compact --data-dir /tmp/erase10m
    python benches/erasure.py target/release/raindrop /tmp/erase10m acme

It starts `raindrop serve` on the directory with a fresh read_write token of
the project, then erases the project's largest session (once without and
once with its `event_day` range) and its largest device, printing each
statement's wall time and the server's "rows erased" log fields. The
project's row count is checked against what was erased.
"""

import re
import subprocess
import sys
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql


def main() -> None:
    binary, data_dir, project = sys.argv[1:4]
    secret = f"erasure-bench-{int(time.time())}-token"
    subprocess.run(
        [binary, "token", "create", "--project", project, "--role", "read_write",
         "--token", secret, "--data-dir", data_dir],
        check=True, capture_output=True,
    )  # fmt: skip
    server = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", "--data-dir", data_dir,
         "--compact-interval-secs", "0", "--log", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    addr = None
    for line in server.stdout:
        m = re.search(r"listening on grpc://([\d.]+:\d+)", line)
        if m:
            addr = m.group(1)
        if line.lstrip().startswith("warehouse:"):
            break
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()
    conn = flightsql.connect(
        f"grpc://{addr}",
        db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {secret}"},
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:

            def one(sql):
                cur.execute(sql)
                return cur.fetchall()[0]

            def erase(sql):
                before = len(log)
                start = time.perf_counter()
                one(sql)
                ms = (time.perf_counter() - start) * 1000
                time.sleep(0.3)
                line = next((entry for entry in log[before:] if "rows erased" in entry), "")
                fields = dict(re.findall(r"(\w+)=(\S+)", line))
                keep = ("rows", "files_read", "bytes_read", "files_replaced", "bytes_written")
                print(f"{ms:7.0f} ms  {sql}\n           {', '.join(f'{k}={fields.get(k)}' for k in keep)}")
                return int(fields.get("rows", 0))

            total = one("SELECT count(*) FROM wildedge.raw_events")[0]
            print(f"project {project}: {total} rows")
            largest = "SELECT {c}, count(*) FROM wildedge.raw_events GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
            erased = 0
            session, _ = one(largest.format(c="session_id"))
            erased += erase(f"DELETE FROM wildedge.raw_events WHERE session_id = '{session}'")
            session, _ = one(largest.format(c="session_id"))
            lo, hi = one(
                "SELECT CAST(min(event_day) AS VARCHAR), CAST(max(event_day) AS VARCHAR) "
                f"FROM wildedge.raw_events WHERE session_id = '{session}'"
            )
            erased += erase(
                f"DELETE FROM wildedge.raw_events WHERE session_id = '{session}' "
                f"AND event_day BETWEEN DATE '{lo}' AND DATE '{hi}'"
            )
            device, _ = one(largest.format(c="device_id"))
            erased += erase(f"DELETE FROM wildedge.raw_events WHERE device_id = '{device}'")
            left = one("SELECT count(*) FROM wildedge.raw_events")[0]
            print(f"rows left {left}, expected {total - erased}")
            assert left == total - erased
    finally:
        conn.close()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
