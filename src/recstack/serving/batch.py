"""Batch top-N: every known user's list from the packaged funnel and policy (e-mail campaigns, cache warming).

The lists come from :meth:`Recommender.recommend_batch`, the service's own code over the packaged bundle
(same retrieval, ranker, policy, seeds and fallbacks; no budgets), so a user's batch list is the list the
service answers for ``(user, surface, k)`` with the same bundle and snapshot.

Users are split into fixed chunks; worker processes (one per core by default) each load the bundle once and
write one Parquet part per chunk, atomically (temporary file, then rename). A rerun over the same bundle
and settings keeps the parts already written, so an interrupted run resumes; a different bundle or
settings starts over. Output, in ``out_dir``:

* ``part-NNNNN.parquet``: one row per (user, position): ``user_id``, ``position`` (1-based), ``item_id``,
  ``score``, ``served_by``;
* ``manifest.json``: the bundle's version (:func:`bundle_fingerprint`), settings, counts and timing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

MANIFEST = "manifest.json"
SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("position", pa.int16()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("served_by", pa.dictionary(pa.int8(), pa.string())),
    ]
)


@dataclass(frozen=True)
class BatchSettings:
    """What the batch computes: ``k`` items per user on ``surface``; how: ``chunk_users`` users per part
    file, ``batch_users`` per model batch, ``processes`` workers (0 = one per core)."""

    k: int = 50
    surface: str = "homepage"
    chunk_users: int = 4096
    batch_users: int = 32
    processes: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "chunk_users", "batch_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"batch_topn.{name} must be at least 1, got {getattr(self, name)}")
        if self.processes < 0:
            raise ValueError(f"batch_topn.processes must be 0 (one per core) or more, got {self.processes}")


_ENGINE: Any = None  # the worker process's Recommender, loaded once by _init


def _init(bundle_dir: str) -> None:
    import torch

    from recstack.serving.engine import Recommender

    global _ENGINE
    torch.set_num_threads(1)  # one process per core already
    _ENGINE = Recommender.load(bundle_dir, overrides={"cache": {"enabled": False}})


def _run_chunk(part: Path, user_ids: list[str], settings: BatchSettings) -> dict[str, Any]:
    """Lists of ``user_ids`` written to ``part``; returns counts for the manifest."""
    from recstack.serving.schemas import RecommendRequest

    start = time.perf_counter()
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    served: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    short = 0
    for s in range(0, len(user_ids), settings.batch_users):
        requests = [
            RecommendRequest(user_id=u, k=settings.k, surface=settings.surface)
            for u in user_ids[s : s + settings.batch_users]
        ]
        for resp in _ENGINE.recommend_batch(requests):
            served[resp.served_by] += 1
            fallbacks.update(resp.fallbacks)
            short += len(resp.items) < settings.k
            for pos, item in enumerate(resp.items, start=1):
                cols["user_id"].append(resp.user_id)
                cols["position"].append(pos)
                cols["item_id"].append(item.item_id)
                cols["score"].append(item.score)
                cols["served_by"].append(resp.served_by)
    tmp = part.with_suffix(".tmp")
    pq.write_table(pa.table(cols, schema=SCHEMA), tmp)
    os.replace(tmp, part)  # a part exists only when complete
    return {
        "users": len(user_ids),
        "rows": len(cols["user_id"]),
        "short_lists": short,
        "served_by": dict(served),
        "fallbacks": dict(fallbacks),
        "seconds": time.perf_counter() - start,
    }


def bundle_fingerprint(bundle_dir: Path) -> str:
    """The package stage's version of what a bundle answers with (models, index, policy, serving settings,
    recstack's code), recomputed from the bundle itself: a resumed run must come from the same one, or
    parts from two bundles would mix two answers."""
    import yaml

    import recstack
    from recstack.serving.bundle import BUNDLE_CARD, POLICY_FILE, SERVING_FILE
    from recstack.serving.package import bundle_version, code_digest

    def read(name: str) -> dict[str, Any]:
        path = bundle_dir / name
        return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}

    card = json.loads((bundle_dir / BUNDLE_CARD).read_text())
    return bundle_version(
        card, read(POLICY_FILE), read(SERVING_FILE), code_digest(Path(recstack.__file__).parent)
    )


def batch_topn(
    bundle_dir: Path, out_dir: Path, settings: BatchSettings, user_ids: list[str] | None = None
) -> dict[str, Any]:
    """Top-``k`` lists of ``user_ids`` (default: every user the bundle knows) into ``out_dir``.

    Returns the manifest: the bundle's version, settings, users, rows, short lists, paths served and fallbacks,
    wall seconds and users per second.
    """
    from recstack.features.spec import FeatureSpec

    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if user_ids is None:
        user_ids = [str(u) for u in FeatureSpec.load(bundle_dir / "features").user_id.values.to_list()]
    chunks = [user_ids[s : s + settings.chunk_users] for s in range(0, len(user_ids), settings.chunk_users)]
    identity = {
        "bundle": bundle_fingerprint(bundle_dir),
        "settings": asdict(settings) | {"processes": None},  # the worker count does not change the lists
        "users": len(user_ids),
        "first_user": user_ids[0] if user_ids else None,
        "last_user": user_ids[-1] if user_ids else None,
    }
    manifest_path = out_dir / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if previous is None or previous.get("identity") != identity:
        # Another bundle or other settings: parts of the old run would mix two answers.
        shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps({"identity": identity, "complete": False}, indent=2) + "\n")
    parts = [out_dir / f"part-{i:05d}.parquet" for i in range(len(chunks))]
    todo = [i for i, p in enumerate(parts) if not p.exists()]
    processes = settings.processes or os.cpu_count() or 1
    processes = max(1, min(processes, len(todo)))
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    if processes == 1 and todo:
        # One worker: run here and save a process start (loading torch and the bundle takes seconds).
        import torch

        threads = torch.get_num_threads()
        try:
            _init(str(bundle_dir))
            results = [
                _run_chunk(parts[i], chunks[i], settings) for i in tqdm(todo, desc="batch_topn", unit="chunk")
            ]
        finally:
            _ENGINE.close()
            torch.set_num_threads(threads)
    elif todo:
        # spawn: a forked child would inherit the parent's torch and OpenMP thread state.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            processes, mp_context=ctx, initializer=_init, initargs=(str(bundle_dir),)
        ) as pool:
            futures = [pool.submit(_run_chunk, parts[i], chunks[i], settings) for i in todo]
            results = [f.result() for f in tqdm(futures, desc="batch_topn", unit="chunk")]
    wall = time.perf_counter() - start
    done_users = sum(r["users"] for r in results)
    served: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    for r in results:
        served.update(r["served_by"])
        fallbacks.update(r["fallbacks"])
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    manifest = {
        "identity": identity,
        "complete": True,
        "parts": len(parts),
        "rows": rows,
        "computed_users": done_users,
        "resumed_parts": len(parts) - len(todo),
        "short_lists": sum(r["short_lists"] for r in results),
        "served_by": dict(served),
        "fallbacks": dict(fallbacks),
        "processes": processes if todo else 0,
        "wall_seconds": round(wall, 3),
        "users_per_second": round(done_users / wall, 1) if done_users and wall > 0 else None,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
