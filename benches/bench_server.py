"""What the Python benchmarks share: a `raindrop serve` process, tokens, timing."""

import re
import statistics
import subprocess
import threading
import time
import uuid


def token(binary, data_dir, project, role):
    """A new token of `role` for `project` (None: an admin), in `data_dir`."""
    secret = f"bench-{project or 'admin'}-{uuid.uuid4().hex}"
    args = [binary, "token", "create", "--role", role, "--token", secret, "--data-dir", data_dir]
    subprocess.run(args + (["--project", project] if project else []), check=True, capture_output=True)
    return secret


def serve(binary, data_dir, *args):
    """Start `raindrop serve` on free ports with its HTTP port; returns the
    process, the Flight address and the HTTP base URL. Its log is drained so
    a full pipe never blocks it."""
    server = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir", data_dir, "--log", "warn", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    addr = base = None
    for line in server.stdout:
        if m := re.search(r"listening on grpc://([\d.]+:\d+)", line):
            addr = m.group(1)
        if m := re.search(r"metrics\s*: (http://\S+)/metrics", line):
            base = m.group(1)
        if line.lstrip().startswith("warehouse:"):
            break
    if addr is None or base is None:
        server.kill()
        raise RuntimeError("raindrop serve exited before listening")
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
    return server, addr, base


def timed(fn, repeat=1):
    """Median wall time of `repeat` calls, in ms, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out
