"""Serving benchmark: recstack's packaged bento under load, against BentoML's floor, in one run.

    python benchmarks/serving_load.py [PROJECT_DIR] [--concurrency 1 8 32] [--seconds 10] [--rounds 2]

PROJECT_DIR is a project whose ``package`` stage has run (default: this one; ``ml100k_pipeline.sh``
leaves an ML-100K one). The script starts two real ``bentoml serve`` processes on 127.0.0.1: the packaged
``recstack`` bento (result cache off, so every request runs the funnel) and the minimal endpoint of
``benchmarks/floor_service.py`` (a fixed list of 10 ids). At each concurrency it alternates rounds of the
two with a closed-loop asyncio load generator and reports p50 / p95 / p99 latency, requests/s and errors,
and the ratios the serving issue sets as the bar (recommend's requests/s over the floor's, p99 over the
floor's p99), and where each target's CPU went per request: the workers' event-loop threads, their other
threads (recstack's stage lanes), BentoML's supervisor and the load generator itself, all sharing this
machine's cores (with recstack's mean retrieval batch). It then times the same funnel in-process (the
floor of the funnel itself, no HTTP) with the ANN index and with exact whole-catalog scoring (what the
index saves), prints where the in-process time goes by stage, and its CPU per request with warm caches
and with caches evicted between requests (what serving amid other work costs the funnel).
``--compare TAG`` serves a second bento of the store in the same rounds (an A/B of two builds in one run:
this host's speed moves by 2x between runs); ``--compare-overrides JSON`` gives that arm other serving
settings, and alone serves the same bento with them (an A/B of one setting, e.g.
``'{"lane_scheduling": "normal"}'``).

recstack's workers run with their default CPU affinity (each bound to a core of its own, one worker per
core here; ``--affinity``), the floor's with BentoML's default (placed by the OS, ``--floor-affinity``),
which is the faster floor on this machine: bound the same way it served 15-20 % fewer requests/s, so
comparing against it would flatter recstack. ``--floor raw`` serves the stricter floor that returns a ready
response, as recstack's endpoint does (``floor_service.FloorRaw``: no output conversion by BentoML).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import psutil

from recstack.serving.local import Served, bentoml_serve
from recstack.serving.package import MODEL_NAME, STORE_DIR
from recstack.serving.workers import AFFINITY_ENV, AFFINITY_MODES

HERE = Path(__file__).resolve().parent
NO_CACHE = {"cache": {"enabled": False}}
STAGGER_S = 0.01  # between the clients' first requests (both targets alike)
FLOORS = {"idiomatic": "floor_service:Floor", "raw": "floor_service:FloorRaw"}


async def load(base: str, users: list[str], concurrency: int, seconds: float, k: int) -> dict:
    """Closed loop: ``concurrency`` clients, each sending its next request when the last one returns."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal errors
            # Clients connect a little apart, as real ones do: BentoML's workers share one socket, and
            # eight connections opened in the same instant can all land on one worker (issue #5426).
            await asyncio.sleep(STAGGER_S * w)
            i = w
            while time.perf_counter() < stop_at:
                user = users[i % len(users)]
                i += concurrency
                t = time.perf_counter()
                try:
                    r = await client.post("/recommend", json={"user_id": user, "k": k})
                    ok = r.status_code == 200 and len(r.json()["items"]) == k
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        start_t = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - start_t
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),
        "rps": len(ms) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
    }


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of a server and of this process (the load generator), split by where they went:
    the workers' event-loop threads (HTTP, BentoML, and recstack's planning, policy and response), their
    other threads (recstack's stage lanes: retrieval and ranking), BentoML's supervisor, and the client."""
    out = {"loop": 0.0, "threads": 0.0, "supervisor": 0.0}
    root = psutil.Process(server_pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            worker = _is_worker(proc)
            threads = proc.threads()
        except psutil.NoSuchProcess:
            continue
        for t in threads:
            part = "supervisor" if not worker else "loop" if t.id == proc.pid else "threads"
            out[part] += t.user_time + t.system_time
    me = psutil.Process().cpu_times()
    out["client"] = me.user + me.system
    return out


def _is_worker(proc: psutil.Process) -> bool:
    """Whether a process of a ``bentoml serve`` tree is one of its service workers (not the supervisor)."""
    return "_bentoml_impl.worker" in " ".join(proc.cmdline())


def worker_cores(server_pid: int) -> list[list[int]]:
    """The cores each worker process of a server may run on (what ``RECSTACK_CPU_AFFINITY`` did)."""
    return [
        sorted(p.cpu_affinity()) for p in psutil.Process(server_pid).children(recursive=True) if _is_worker(p)
    ]


def connections_per_worker(server_pid: int) -> list[int]:
    """Established connections each worker of a server holds now, most first (how the kernel spread the
    load generator's keep-alive connections; recstack's workers rebalance theirs)."""
    counts = []
    for proc in psutil.Process(server_pid).children(recursive=True):
        try:
            if _is_worker(proc):
                counts.append(sum(c.status == psutil.CONN_ESTABLISHED for c in proc.net_connections("tcp")))
        except psutil.NoSuchProcess:
            continue
    return sorted(counts, reverse=True)


def profiled(base: Served, users: list[str], concurrency: int, seconds: float, k: int) -> dict:
    """One round of :func:`load`, with the CPU each part used per request (ms) and the connections per
    worker a quarter of the way in."""
    before = cpu_seconds(base.pid)
    split: list[list[int]] = []
    timer = threading.Timer(seconds / 4, lambda: split.append(connections_per_worker(base.pid)))
    timer.start()
    result = asyncio.run(load(base, users, concurrency, seconds, k))
    timer.join()
    after = cpu_seconds(base.pid)
    n = max(result["requests"], 1)
    result["cpu_ms"] = {part: (after[part] - before[part]) / n * 1000 for part in after}
    result["connections"] = split[0] if split else []
    return result


def batch_totals(base: str) -> tuple[float, float]:
    """(requests, batches) of recstack's retrieval stage so far, all workers (its Prometheus metrics)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    requests = batches = 0.0
    for line in text.splitlines():
        if 'stage="retrieval"' in line:
            if line.startswith("recstack_batch_size_sum"):
                requests += float(line.rsplit(" ", 1)[1])
            elif line.startswith("recstack_batch_size_count"):
                batches += float(line.rsplit(" ", 1)[1])
    return requests, batches


def merge(runs: list[dict]) -> dict:
    """Rounds of one target pooled: request-weighted rate, worst-round percentiles, summed errors."""
    return {
        "requests": sum(r["requests"] for r in runs),
        "rps": float(np.mean([r["rps"] for r in runs])),
        "p50_ms": float(np.median([r["p50_ms"] for r in runs])),
        "p95_ms": float(np.median([r["p95_ms"] for r in runs])),
        "p99_ms": float(np.median([r["p99_ms"] for r in runs])),
        "errors": sum(r["errors"] for r in runs),
        "cpu_ms": {part: float(np.mean([r["cpu_ms"][part] for r in runs])) for part in runs[0]["cpu_ms"]},
        "connections": [r["connections"] for r in runs],
    }


def in_process(
    bundle: Path, users: list[str], k: int, n: int, overrides: dict, evicted: bool = False
) -> tuple[dict, dict[str, float], bool]:
    """Sequential in-process requests: total and per-stage percentiles (ms), CPU per request (ms, all
    threads) with the caches warm, and whether retrieval scanned the catalog instead of the HNSW graph
    (``ServingConfig.full_scan_max_items``); ``evicted``: also with a 32 MB sweep between requests, which
    evicts the caches as the HTTP stack, the load generator and the other worker do between a served
    request's stages (how much of the served cost is the funnel's memory traffic: model weights, item vectors, the
    HNSW graph, the item timeline). ``overrides``: serving settings of this variant."""
    import torch

    from recstack.serving.engine import Recommender
    from recstack.serving.schemas import RecommendRequest

    torch.set_num_threads(1)
    rec = Recommender.load(bundle, overrides={**NO_CACHE, **overrides})
    scanned = rec.stages.full_scan
    sweep = np.ones(4_000_000)  # 32 MB: larger than this machine's last-level cache share
    stages: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    try:
        for i in range(min(n, 50)):  # warm-up: lazy initialisations are not a request's cost
            rec.recommend(RecommendRequest(user_id=users[i % len(users)], k=k))
        for mode in ("warm", "evicted") if evicted else ("warm",):
            spent = 0.0
            for i in range(n):
                if mode == "evicted":
                    sweep.sum()
                start = time.process_time()
                resp = rec.recommend(RecommendRequest(user_id=users[i % len(users)], k=k))
                spent += time.process_time() - start
                if mode == "warm":
                    for s, v in resp.timings_ms.items():
                        stages.setdefault(s, []).append(v)
            cpu[mode] = spent / n * 1000
    finally:
        rec.close()
    percentiles = {
        s: {"p50_ms": float(np.percentile(v, 50)), "p95_ms": float(np.percentile(v, 95))}
        for s, v in stages.items()
    }
    return percentiles, cpu, scanned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", nargs="?", default=str(HERE.parent))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--in-process", type=int, default=500, help="sequential in-process requests per variant (0: none)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument(
        "--overrides",
        type=json.loads,
        default={},
        help="serving settings merged over the packaged ones for recstack's server, as JSON, e.g. "
        "'{\"batch_window_ms\": 4}' (the result cache stays off)",
    )
    ap.add_argument(
        "--bento",
        default=None,
        help="serve this bento of the project's store (e.g. an earlier build, for an A/B in one session); "
        "default: the one the package stage built",
    )
    ap.add_argument(
        "--compare",
        default=None,
        metavar="TAG",
        help="also serve this bento of the store (e.g. an earlier build) as 'compare', in the same rounds "
        "as recommend (their order alternating): an A/B in one run, where the host's speed moves both alike",
    )
    ap.add_argument(
        "--compare-overrides",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="serving settings of the 'compare' arm instead of --overrides; without --compare it serves "
        "recommend's own bento with them (an A/B of settings in one run)",
    )
    ap.add_argument(
        "--affinity",
        choices=AFFINITY_MODES,
        default="auto",
        help="recstack's workers (its default auto: each bound to a core of its own when one per core)",
    )
    ap.add_argument(
        "--floor",
        choices=sorted(FLOORS),
        default="idiomatic",
        help="the floor's endpoint: idiomatic (returns a dict, which BentoML converts: the issue's "
        "hello-world) or raw (returns a ready response, as recstack's endpoint does)",
    )
    ap.add_argument(
        "--floor-affinity",
        choices=AFFINITY_MODES,
        default="none",
        help="the floor's workers (default: placed by the OS, BentoML's default and the faster floor here)",
    )
    args = ap.parse_args()

    project = Path(args.project).resolve()
    package = json.loads((project / "artifacts" / "package" / "package.json").read_text())
    if args.bento:
        package["bento_tag"] = args.bento
    compare = args.compare or (package["bento_tag"] if args.compare_overrides is not None else None)
    compare_overrides = args.overrides if args.compare_overrides is None else args.compare_overrides
    bundle = project / "artifacts" / "package" / "bundle"
    from recstack.features.spec import FeatureSpec

    spec = FeatureSpec.load(bundle / "features")
    users = [str(u) for u in spec.user_id.values.to_list()]
    rng = np.random.default_rng(0)
    users = [users[i] for i in rng.permutation(len(users))]
    n_items = spec.item_id.size
    logs = Path(tempfile.mkdtemp(prefix="serving_load_"))
    env = {
        **os.environ,
        "BENTOML_HOME": str(project / STORE_DIR),
        "RECSTACK_LOG_DIR": str(logs / "recstack-logs"),
        "RECSTACK_SERVING_OVERRIDES": json.dumps({**args.overrides, **NO_CACHE}),
    }
    print(
        f"catalog: {n_items} items, {len(users)} users; bento {package['bento_tag']}; logs {logs}; "
        f"CPU affinity: recstack {args.affinity}, floor {args.floor_affinity}; floor endpoint {args.floor}"
    )
    results: dict = {
        "catalog_items": n_items,
        "users": len(users),
        "affinity": {"recstack": args.affinity, "floor": args.floor_affinity},
        "floor": args.floor,
        "http": {},
    }
    with ExitStack() as servers:
        rec_base = servers.enter_context(
            bentoml_serve(
                package["bento_tag"], project, {**env, AFFINITY_ENV: args.affinity}, logs / "recstack.out"
            )
        )
        floor_base = servers.enter_context(
            bentoml_serve(
                FLOORS[args.floor], HERE, {**env, AFFINITY_ENV: args.floor_affinity}, logs / "floor.out"
            )
        )
        bases = {"floor": floor_base, "recommend": rec_base}
        if compare:
            compare_env = {
                **env,
                AFFINITY_ENV: args.affinity,
                "RECSTACK_LOG_DIR": str(logs / "compare-logs"),
                "RECSTACK_SERVING_OVERRIDES": json.dumps({**compare_overrides, **NO_CACHE}),
            }
            # Its own model (the package stage gives bento and model one version): a bento built before
            # bentos recorded their model would load the store's latest, maybe with settings its code
            # does not know.
            own_model = project / STORE_DIR / "models" / MODEL_NAME / compare.split(":", 1)[-1]
            if own_model.is_dir() and "RECSTACK_MODEL" not in os.environ:
                compare_env["RECSTACK_MODEL"] = f"{MODEL_NAME}:{own_model.name}"
            bases["compare"] = servers.enter_context(
                bentoml_serve(compare, project, compare_env, logs / "compare.out")
            )
            results["compare_bento"] = compare
            results["compare_overrides"] = compare_overrides
        for base in bases.values():  # warm-up
            asyncio.run(load(base, users, 2, 2.0, args.k))
        results["worker_cores"] = {
            "recstack": worker_cores(rec_base.pid),
            "floor": worker_cores(floor_base.pid),
        }
        print(f"workers' cores: {results['worker_cores']}")
        for c in args.concurrency:
            runs: dict[str, list[dict]] = {name: [] for name in bases}
            requests_before, batches_before = batch_totals(rec_base)
            for r in range(args.rounds):
                order = ["floor", "recommend", "compare"] if r % 2 == 0 else ["floor", "compare", "recommend"]
                for name in order:
                    if name in bases:
                        runs[name].append(profiled(bases[name], users, c, args.seconds, args.k))
            floor, rec = merge(runs["floor"]), merge(runs["recommend"])
            results["http"][c] = {
                "floor": floor,
                "recommend": rec,
                "rps_ratio": rec["rps"] / floor["rps"],
                "p99_ratio": rec["p99_ms"] / floor["p99_ms"],
            }
            if "compare" in runs:
                other = merge(runs["compare"])
                results["http"][c]["compare"] = other
                results["http"][c]["compare_rps_ratio"] = other["rps"] / floor["rps"]
                results["http"][c]["compare_p99_ratio"] = other["p99_ms"] / floor["p99_ms"]
            requests_after, batches_after = batch_totals(rec_base)
            batches = batches_after - batches_before
            results["http"][c]["mean_batch"] = (
                (requests_after - requests_before) / batches if batches else None
            )
    results["in_process"] = {}
    if args.in_process > 0:
        served = {**args.overrides, "retrieval": "ann"}
        ann, results["cache_effect"], scanned = in_process(
            bundle, users, args.k, args.in_process, served, evicted=True
        )
        results["in_process"]["ann"] = ann
        if scanned:
            # A small catalog's HNSW index is served by a scan (ServingConfig.full_scan_max_items): time
            # the graph too, so what each costs stays visible.
            graph = {**served, "full_scan_max_items": 0}
            results["in_process"]["hnsw"] = in_process(bundle, users, args.k, args.in_process, graph)[0]
        results["in_process"]["exact"] = in_process(
            bundle, users, args.k, args.in_process, {**served, "retrieval": "exact"}
        )[0]

    print(f"\n{'conc':>4} {'target':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}")
    targets = ("floor", "recommend", "compare") if compare else ("floor", "recommend")
    for c, r in results["http"].items():
        for name in targets:
            m = r[name]
            print(
                f"{c:>4} {name:>9} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p95_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['errors']:>6}"
            )
        print(f"{'':>4} {'ratio':>9} {r['rps_ratio']:>8.2f} {'':>8} {'':>8} {r['p99_ratio']:>8.2f}")
        if compare:
            settings = (
                f", settings {json.dumps(compare_overrides)}" if compare_overrides != args.overrides else ""
            )
            print(
                f"{'':>4} {'compare':>9} {r['compare_rps_ratio']:>8.2f} {'':>8} {'':>8} {r['compare_p99_ratio']:>8.2f}"
                f"   (compare: {compare}{settings}; recommend / compare req/s "
                f"{r['recommend']['rps'] / r['compare']['rps']:.3f})"
            )
    print("\nCPU per request (ms), where it went:")
    print(
        f"{'conc':>4} {'target':>9} {'event loops':>12} {'lanes etc.':>11} {'supervisor':>11} {'client':>7} {'total':>7}"
    )
    batch_note = []
    for c, r in results["http"].items():
        for name in targets:
            cpu = r[name]["cpu_ms"]
            print(
                f"{c:>4} {name:>9} {cpu['loop']:>12.3f} {cpu['threads']:>11.3f} {cpu['supervisor']:>11.3f}"
                f" {cpu['client']:>7.3f} {sum(cpu.values()):>7.3f}"
            )
        if r["mean_batch"] is not None:
            batch_note.append(f"{r['mean_batch']:.2f} at concurrency {c}")
    print("recommend's mean retrieval batch (requests): " + ", ".join(batch_note))
    print("connections per worker, round by round:")
    for c, r in results["http"].items():
        for name in targets:
            print(f"{c:>4} {name:>9} " + " ".join(str(x) for x in r[name]["connections"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not results["in_process"]:
        return
    print("\nin-process funnel (sequential, ms):")
    if "hnsw" in results["in_process"]:
        print("  (the catalog is small enough to scan, as the service does: 'ann'; 'hnsw': the graph's walk)")
    for variant, stages in results["in_process"].items():
        print(
            f"  {variant:>5}: "
            + ", ".join(f"{s} p50 {v['p50_ms']:.2f} / p95 {v['p95_ms']:.2f}" for s, v in stages.items())
        )
    ce = results["cache_effect"]
    print(
        f"\nin-process CPU per request (ms, all threads): warm caches {ce['warm']:.2f}, caches evicted "
        f"between requests {ce['evicted']:.2f} ({ce['evicted'] / ce['warm']:.2f}x)"
    )


if __name__ == "__main__":
    main()
