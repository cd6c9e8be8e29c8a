"""Run ``bentoml serve`` on a free 127.0.0.1 port until it is ready (tests, benchmarks, local trials)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served(str):
    """The base URL of a running server (a ``str``), with ``pid``: its process group, for crash tests."""

    pid: int


@contextmanager
def bentoml_serve(
    target: str, cwd: Path, env: dict[str, str], log: Path, ready_s: float = 180
) -> Iterator[Served]:
    """Serve ``target`` (``module:Service`` in ``cwd``, or a bento tag) and yield its base URL.

    Output goes to ``log``; a server that exits or is not ready within ``ready_s`` raises with the log's
    tail. The whole process group is stopped on exit (SIGTERM, then SIGKILL after 20 s).
    """
    port = free_port()
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [bentoml, "serve", target, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + ready_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"bentoml serve {target} exited: {log.read_text()[-3000:]}")
                if time.time() > deadline:
                    raise RuntimeError(
                        f"bentoml serve {target} not ready in {ready_s:g} s: {log.read_text()[-3000:]}"
                    )
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            served = Served(base)
            served.pid = proc.pid
            yield served
        finally:
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=20)
            except ProcessLookupError:  # already gone (a test killed it)
                proc.wait()
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
