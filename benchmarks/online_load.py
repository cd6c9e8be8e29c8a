"""Online-state benchmark: recommend under load with the embedded store against Redis, and the time from a
feedback event to a changed recommendation.

    python benchmarks/online_load.py [PROJECT_DIR] [--concurrency 8] [--seconds 8] [--rounds 3] [--users 100]

PROJECT_DIR is a project whose ``package`` stage has run (default: this one). The script starts a real
``redis-server`` (scripts/test_services.sh installs it) on a free port, materializes the bundle into it,
then runs the packaged bento twice with ``bentoml serve`` on 127.0.0.1 (default workers, result cache
off, so every request reads the online state and runs the funnel): once with the embedded store, once
with Redis. Rounds alternate between the two servers with the serving benchmark's load generator.

Feedback to changed recommendation: for ``--users`` users, with the cache on, the client gets a list,
clicks its first item (POST /feedback), then asks again until the list no longer holds that item; the
time from sending the click to receiving the changed list is reported (p50 / p95 / max), and how many
follow-up requests it took. With several workers the follow-up may reach a worker that did not accept the
click: Redis is shared at once; the embedded store takes the other workers' events from the shared log
every 0.1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_load import load, merge

from recstack.online.local import redis_server
from recstack.serving.bundle import load_bundle
from recstack.serving.local import bentoml_serve
from recstack.serving.online import materialize


def feedback_to_change(base: str, users: list[str], k: int, max_wait_s: float = 5.0) -> dict:
    """Per user: list, click its top item, re-ask until the item is gone. Seconds and re-asks."""
    waits, asks = [], []
    with httpx.Client(base_url=base, timeout=30) as c:
        for user in users:
            first = c.post("/recommend", json={"user_id": user, "k": k}).json()
            if not first["items"]:
                continue
            top = first["items"][0]["item_id"]
            event = {
                "user_id": user,
                "item_id": top,
                "event_type": "click",
                "timestamp": datetime.now(UTC).isoformat(),
            }
            t = time.perf_counter()
            ack = c.post("/feedback", json=event)
            ack.raise_for_status()
            n = 0
            while True:
                n += 1
                items = [
                    i["item_id"] for i in c.post("/recommend", json={"user_id": user, "k": k}).json()["items"]
                ]
                if top not in items:
                    break
                if time.perf_counter() - t > max_wait_s:
                    raise RuntimeError(
                        f"user {user}: the clicked item was still recommended after {max_wait_s} s"
                    )
            waits.append(time.perf_counter() - t)
            asks.append(n)
    ms = np.array(waits) * 1000
    return {
        "users": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(ms.max()),
        "first_ask_changed": float(np.mean(np.array(asks) == 1)),
        "max_asks": int(max(asks)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[8])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--users", type=int, default=100, help="users in the feedback-to-change measurement")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    project = Path(args.project).resolve()
    package = json.loads((project / "artifacts" / "package" / "package.json").read_text())
    bundle = load_bundle(project / "artifacts" / "package" / "bundle")
    users = [str(u) for u in bundle.tables.spec.user_id.values.to_list()]
    users = [users[i] for i in np.random.default_rng(0).permutation(len(users))]
    tmp = Path(tempfile.mkdtemp(prefix="online_load_"))
    results: dict = {"http": {}, "feedback_to_change": {}}
    with redis_server(tmp / "redis") as url:
        summary = materialize(bundle, url, "bench")
        print(f"materialized {summary['users']} users into Redis in {summary['seconds']} s")
        online = {
            "embedded": {"backend": "embedded"},
            "redis": {"backend": "redis", "redis_url": url, "namespace": "bench"},
        }

        def env(name: str, cache: bool) -> dict:
            overrides = {"online": online[name], "cache": {"enabled": cache}}
            return {
                **os.environ,
                "BENTOML_HOME": str(project / "bentos" / "store"),
                "RECSTACK_LOG_DIR": str(tmp / f"logs-{name}-{cache}"),
                "RECSTACK_SERVING_OVERRIDES": json.dumps(overrides),
            }

        tag = package["bento_tag"]
        with (
            bentoml_serve(tag, project, env("embedded", False), tmp / "embedded.out") as emb,
            bentoml_serve(tag, project, env("redis", False), tmp / "redis.out") as red,
        ):
            for base in (emb, red):
                asyncio.run(load(base, users, 2, 2.0, args.k))
            for c in args.concurrency:
                runs: dict[str, list[dict]] = {"embedded": [], "redis": []}
                for _ in range(args.rounds):
                    runs["embedded"].append(asyncio.run(load(emb, users, c, args.seconds, args.k)))
                    runs["redis"].append(asyncio.run(load(red, users, c, args.seconds, args.k)))
                e, r = merge(runs["embedded"]), merge(runs["redis"])
                results["http"][c] = {"embedded": e, "redis": r, "rps_ratio": r["rps"] / e["rps"]}
        for name in ("embedded", "redis"):
            with bentoml_serve(tag, project, env(name, True), tmp / f"{name}-fb.out") as base:
                results["feedback_to_change"][name] = feedback_to_change(base, users[: args.users], args.k)

    print(
        f"\n{'conc':>4} {'backend':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    for c, r in results["http"].items():
        for name in ("embedded", "redis"):
            m = r[name]
            print(
                f"{c:>4} {name:>9} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p95_ms']:>8.2f} "
                f"{m['p99_ms']:>8.2f} {m['errors']:>6}"
            )
        print(f"{'':>4} {'redis/emb':>9} {r['rps_ratio']:>8.2f}")
    print("\nfeedback -> changed recommendation (click sent to changed list received):")
    for name, f in results["feedback_to_change"].items():
        print(
            f"  {name:>8}: {f['users']} users, p50 {f['p50_ms']:.1f} ms, p95 {f['p95_ms']:.1f} ms, "
            f"max {f['max_ms']:.1f} ms; changed on the first re-ask for {100 * f['first_ask_changed']:.0f} %"
            f" (at most {f['max_asks']} asks)"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
