"""The ``recstack`` command line: thin wrappers over the same typed functions notebooks and tests call.

Examples::

    recstack data default                          # (re)create the embedded dataset data/raw/synthetic
    recstack data generate /tmp/syn10m --n-interactions 10000000 --n-users 500000 --n-items 100000
    recstack data download movielens-1m data/external
    recstack data validate movielens-100k ../shared/data/ml-100k
    recstack online materialize artifacts/package/bundle --redis-url redis://127.0.0.1:6379/0
    recstack monitor simulate http://127.0.0.1:3000 artifacts/package/bundle --rate 100 --drift category_surge
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from recstack.data.schema import DataError


def _cmd_default(args: argparse.Namespace) -> int:
    from recstack.data.embedded import ensure_default_dataset
    from recstack.paths import project_root

    print(ensure_default_dataset(project_root(), force=args.force))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from recstack.data.synthetic import DEFAULT_CONFIG, SyntheticConfig, generate_synthetic

    fields = SyntheticConfig.model_fields
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    # Validated construction (model_copy would skip validation of the overrides).
    config = SyntheticConfig.model_validate({**DEFAULT_CONFIG.model_dump(), **overrides})
    summary = generate_synthetic(args.out, config, progress=True)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from recstack.data.download import archive_name, download_movielens

    path = download_movielens(args.name, args.dest, url=args.url, checksum=args.checksum)
    # ml-latest-small has the same format as ml-latest: one adapter reads both.
    source = "movielens-" + archive_name(args.name).removeprefix("ml-").removesuffix("-small")
    print(
        f"{args.name} ready at {path}\nuse: dvc exp run -S data.source={source} -S data.path={path.resolve()}"
    )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from recstack.data.adapters import load_source
    from recstack.data.validate import validate

    options = json.loads(args.options) if args.options else {}
    result = validate(load_source(args.source, args.path, **options), max_bad_fraction=args.max_bad_fraction)
    print(result.report.model_dump_json(indent=2))
    return 0 if result.report.passed else 1


def _cmd_materialize(args: argparse.Namespace) -> int:
    from recstack.serving.bundle import load_bundle
    from recstack.serving.online import REDIS_URL_ENV, materialize

    url = args.redis_url or os.environ.get(REDIS_URL_ENV)
    if not url:
        print(f"error: give --redis-url or set {REDIS_URL_ENV}", file=sys.stderr)
        return 2
    bundle = load_bundle(args.bundle)
    namespace = args.namespace or bundle.config.online.namespace
    summary = materialize(bundle, url, namespace, version=args.version, feedback_log=args.feedback_log)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    import httpx

    from recstack.monitoring.simulate import (
        Drift,
        SimulationConfig,
        apply_drift,
        held_out_events,
        http_poster,
        item_categories,
        simulate,
    )

    drift = Drift(kind=args.drift, start=args.drift_start, category=args.drift_category)
    config = SimulationConfig(
        k=args.k, noise=args.noise, max_events=args.max_events, rate=args.rate, seed=args.seed, drift=drift
    )
    events = held_out_events(args.bundle, tuple(args.splits))
    if args.max_events:
        events = events.head(args.max_events)  # before the drift, which starts at a share of these
    events = apply_drift(events, item_categories(args.bundle), drift, args.seed)
    headers = {"X-API-Key": os.environ[args.api_key_env]} if args.api_key_env else {}
    with httpx.Client(base_url=args.url, timeout=30, headers=headers) as client:
        summary = simulate(http_poster(client), events, config)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="recstack", description="recstack command line")
    sub = parser.add_subparsers(dest="group", required=True)
    data = sub.add_parser("data", help="datasets: generate, download, validate").add_subparsers(
        dest="cmd", required=True
    )

    p = data.add_parser("default", help="create the embedded default dataset (data/raw/synthetic) if missing")
    p.add_argument("--force", action="store_true", help="regenerate even if present")
    p.set_defaults(func=_cmd_default)

    p = data.add_parser("generate", help="generate a synthetic dataset of any size")
    p.add_argument("out", type=Path)
    for name in ("n_users", "n_items", "n_interactions", "n_categories", "n_clusters", "n_days", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int)
    p.set_defaults(func=_cmd_generate)

    p = data.add_parser("download", help="download and verify a MovieLens archive")
    p.add_argument(
        "name",
        help="movielens-100k, movielens-1m, movielens-20m, movielens-25m, movielens-latest-small, movielens-latest",
    )
    p.add_argument("dest", type=Path)
    p.add_argument("--url", help="mirror URL or local path (file:// works)")
    p.add_argument("--checksum", help="expected checksum, e.g. sha256:<hex> or md5:<hex>")
    p.set_defaults(func=_cmd_download)

    p = data.add_parser("validate", help="validate a source and print the report (exit 1 if it fails)")
    p.add_argument("source")
    p.add_argument("path", type=Path)
    p.add_argument("--options", help="adapter options as JSON")
    p.add_argument("--max-bad-fraction", type=float, default=0.01)
    p.set_defaults(func=_cmd_validate)

    online = sub.add_parser("online", help="the service's online state").add_subparsers(
        dest="cmd", required=True
    )
    p = online.add_parser(
        "materialize",
        help="load a bundle's interaction snapshot into Redis as a new version, then switch to it",
    )
    p.add_argument("bundle", type=Path, help="a serving bundle, e.g. artifacts/package/bundle")
    p.add_argument("--redis-url", help="redis://host:port/db (default: $RECSTACK_REDIS_URL)")
    p.add_argument("--namespace", help="key prefix (default: the bundle's serving.online.namespace)")
    p.add_argument("--version", help="name of the new version (default: bundle version + time)")
    p.add_argument(
        "--feedback-log",
        type=Path,
        help="the service's feedback.jsonl: events newer than the snapshot to keep",
    )
    p.set_defaults(func=_cmd_materialize)

    monitor = sub.add_parser("monitor", help="monitoring: served traffic").add_subparsers(
        dest="cmd", required=True
    )
    p = monitor.add_parser(
        "simulate", help="replay held-out interactions as recommend requests and feedback against a service"
    )
    p.add_argument("url", help="the service, e.g. http://127.0.0.1:3000")
    p.add_argument("bundle", type=Path, help="the served bundle (its held-out events are replayed)")
    p.add_argument("--splits", nargs="+", default=["test"], help="splits to replay (serve the others)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.05, help="chance a click / skip outcome flips")
    p.add_argument("--max-events", type=int)
    p.add_argument("--rate", type=float, help="requests per second (default: as fast as answered)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--drift", default="none", choices=["none", "user_mix", "category_surge", "broken_feature"]
    )
    p.add_argument("--drift-start", type=float, default=0.5, help="share of the replay before the drift")
    p.add_argument("--drift-category", help="category_surge: the category (default: chosen)")
    p.add_argument(
        "--api-key-env", help="environment variable holding the X-API-Key, if the service needs one"
    )
    p.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recstack`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
