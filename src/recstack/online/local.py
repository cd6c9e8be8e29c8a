"""Run a real ``redis-server`` on a free 127.0.0.1 port until it answers (tests, benchmarks, trials).

The server binary comes from the Debian package (``scripts/test_services.sh`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recstack.serving.local import free_port


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start (the message says which, with its log)."""


@contextmanager
def redis_server(
    data_dir: Path, ready_s: float = 20.0, appendonly: bool = True, port: int | None = None
) -> Iterator[str]:
    """Start ``redis-server`` with its files in ``data_dir``; yield ``redis://127.0.0.1:PORT/0``; stop it.

    ``appendonly``: the append-only file fsynced every second, Redis' usual durable setting. ``port``:
    default a free one (give the same port and directory to restart a server with its data).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError("redis-server not found: run scripts/test_services.sh (Debian package)")
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = data_dir / "redis.log"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", ""]
    args += ["--appendonly", "yes" if appendonly else "no", "--logfile", str(log)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=1)
        deadline = time.monotonic() + ready_s
        while True:
            if proc.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RedisServerError(f"redis-server exited with {proc.returncode}:\n{tail}")
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RedisServerError(f"redis-server on port {port} not ready within {ready_s:g} s")
            time.sleep(0.05)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
