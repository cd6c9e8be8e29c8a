"""Run a recstack training module as a ``torchrun --standalone`` job from a test, and compare the artifacts
such jobs leave.

A helper module for tests, not a test file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recstack.models.artifact import load_weights
from tests.conftest import PROJECT_ROOT


def torchrun(
    args: list[str], nproc: int = 2, timeout: float = 300, module: str = "recstack.training.distributed"
) -> None:
    """``torchrun --standalone`` (a free port of its own) of ``module``; fails the test with its output.

    The job runs in its own process group, killed whole on timeout: a hung collective never outlives the test.
    One thread per process: two ranks share this machine's cores.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", module, *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s:\n{output[-4000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{output[-6000:]}"


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    """The two model artifacts hold the same tensors, each within ``atol``."""
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    for name in wb:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0, msg=name)
