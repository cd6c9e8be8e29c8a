"""Print the evaluation table, segments and training speed of a project run (for closing notes / reviews).

    python benchmarks/model_report.py [PROJECT_DIR]

Reads ``metrics/evaluate.json``, ``metrics/evaluate_segments.json``, ``metrics/train_*.json`` and the
stages' ``artifacts/<stage>/timing.json`` of PROJECT_DIR (default: this project).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recstack.jsonio import read_json

SYSTEMS = ("most_popular", "ease", "rp3beta", "two_tower", "funnel", "funnel_reranked")
KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "coverage@10", "diversity@10", "novelty@10")


def report(root: Path) -> str:
    """Markdown tables of one run."""
    m = read_json(root / "metrics" / "evaluate.json")
    lines = ["| system | " + " | ".join(KEYS) + " | avg_popularity@10 | candidate R@100/200/500 |"]
    lines.append("|---" * (len(KEYS) + 3) + "|")
    for s in (s for s in SYSTEMS if s in m):
        v = m[s]
        cand = (
            "/".join(f"{v[f'candidate_recall@{k}']:.3f}" for k in (100, 200, 500))
            if "candidate_recall@100" in v
            else ""
        )
        cells = " | ".join(f"{v[k]:.4f}" for k in KEYS)
        lines.append(f"| {s} | {cells} | {v['avg_popularity@10']:.1f} | {cand} |")
    seg = read_json(root / "metrics" / "evaluate_segments.json")
    lines += ["", "| system | short-history NDCG@10 | long-tail R@10 | long-tail share@10 | new-item R@10 |"]
    lines.append("|---|---|---|---|---|")
    for s in (s for s in SYSTEMS if s in seg):
        g = seg[s]
        lines.append(
            f"| {s} | {g['short_history_users']['ndcg@10']:.4f} | {g['long_tail_items']['recall@10']:.4f} | "
            f"{g['long_tail_items']['share_of_recs']:.3f} | {g['new_items']['recall@10']:.4f} |"
        )
    lines.append("")
    for stage in ("train_retrieval", "train_ranking"):
        lines.append(f"{stage}: {read_json(root / 'metrics' / f'{stage}.json')}")
        lines.append(f"{stage} timing: {read_json(root / 'artifacts' / stage / 'timing.json')}")
    lines.append(f"evaluate timing: {read_json(root / 'artifacts' / 'evaluate' / 'timing.json')}")
    lines.append(f"tuned baseline settings: { {s: m[s].get('params') for s in m if 'params' in m[s]} }")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("project", nargs="?", default=Path(__file__).resolve().parents[1], type=Path)
    print(report(parser.parse_args().project))
