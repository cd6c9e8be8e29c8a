"""Worker process settings: each service worker bound to a core of its own (``RECSTACK_CPU_AFFINITY``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recstack.serving.workers import AFFINITY_ENV, pin_worker

# A served worker, imitated in a fresh interpreter: BentoML sets the worker's index before it imports the
# service module, which binds the worker there; a thread started before and one started after must both
# end up on the worker's core.
CHILD = """
import json, os, threading
from bentoml._internal.context import server_context
from recstack.serving.workers import configure_worker
server_context.worker_index = {index}
before = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
before.start()
core = configure_worker()
after = {{}}
t = threading.Thread(target=lambda: after.update(cores=sorted(os.sched_getaffinity(0))))
t.start(); t.join()
print(json.dumps({{"core": core, "main": sorted(os.sched_getaffinity(0)),
                  "before": sorted(os.sched_getaffinity(before.native_id)), "after": after["cores"]}}))
"""


def _worker(index: int, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(index=index)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_cores = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores"
)


def _owns_its_cores() -> bool:
    """Whether BentoML's default worker count (one per CPU of the quota) equals the cores we may use."""
    from bentoml._internal.resource import CpuResource

    return int(CpuResource.from_system()) == len(os.sched_getaffinity(0))


@needs_cores
def test_each_worker_and_all_its_threads_are_bound_to_a_core_of_its_own() -> None:
    if not _owns_its_cores():
        pytest.skip("a CPU quota below the cores: the default (auto) leaves placement to the OS")
    cores = sorted(os.sched_getaffinity(0))
    first, second = _worker(1), _worker(2)
    assert first["core"] == cores[0] and second["core"] == cores[1]
    for w in (first, second):
        assert w["main"] == w["before"] == w["after"] == [w["core"]]


@needs_cores
@pytest.mark.parametrize(
    "env",
    [
        {AFFINITY_ENV: "none"},
        {"RECSTACK_WORKERS": "99"},  # more workers than cores
        {"RECSTACK_WORKERS": "1"},  # auto: fewer workers than cores (e.g. a CPU quota on a shared host)
    ],
)
def test_placement_is_left_to_the_os_unless_each_worker_owns_a_core(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bentoml._internal.context import server_context

    everything = sorted(os.sched_getaffinity(0))
    monkeypatch.setattr(server_context, "worker_index", 1)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert pin_worker() is None
    assert sorted(os.sched_getaffinity(0)) == everything


@needs_cores
def test_affinity_worker_binds_fewer_workers_than_cores_too() -> None:
    cores = sorted(os.sched_getaffinity(0))
    one = _worker(1, **{AFFINITY_ENV: "worker", "RECSTACK_WORKERS": "1"})
    assert one["core"] == cores[0] and one["main"] == one["before"] == one["after"] == [cores[0]]


def test_outside_a_served_worker_nothing_is_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(AFFINITY_ENV, raising=False)
    assert pin_worker() is None  # tests, scripts, the batch stage: no worker index


def test_an_unknown_affinity_setting_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AFFINITY_ENV, "cores")
    with pytest.raises(ValueError, match="RECSTACK_CPU_AFFINITY='cores'.*auto, worker, none"):
        pin_worker()


def test_the_light_serving_modules_load_without_torch() -> None:
    """What a worker's settings, the shared slot table and the event log need loads in a fraction of a
    second: processes that serve no model (the benchmark's floor service, monitoring jobs) do not pay for
    torch and torchrec, and the package's names still load on first use."""
    code = (
        "import sys, recstack.serving.workers, recstack.serving.balance, recstack.serving.eventlog\n"
        "import recstack.serving as serving\n"
        "before = 'torch' in sys.modules\n"
        "engine = serving.Recommender.__module__\n"
        "print(before, engine, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "recstack.serving.engine", "True"], out.stdout
