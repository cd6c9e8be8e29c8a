"""The serving bundle: one directory with everything the service loads, built from the pipeline's artifacts.

Layout (the ``package`` stage imports it into the BentoML model store, which packages it into the bento)::

    bundle.json          versions of the models, index, policy and data it was built from
    serving.yaml         ServingConfig        policy.yaml   the re-ranking Policy
    features/            feature spec, vocabularies, item / user tables and the interaction snapshot
    retrieval/ ranking/  the two-tower and DLRM artifacts (model.pt + model.json + features/)
    index/               the FAISS index of the candidate tower's item vectors (optional: the service
                         then serves popular items and says so)
    cooccurrence.npz     "bought together" neighbours of every item
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl
import yaml

from recstack.data.io import INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE, read_columns
from recstack.evaluation.topk import read_interactions
from recstack.features.spec import SPEC_FILE
from recstack.features.transform import USER_IDX
from recstack.models.artifact import load_card
from recstack.models.inputs import FeatureTables, Sequences
from recstack.policy.catalog import policy_catalog
from recstack.policy.rerank import PolicyCatalog
from recstack.policy.schema import Policy, load_policy
from recstack.ranking.features import RankingContext
from recstack.ranking.scorer import FunnelRanker
from recstack.retrieval.index import INDEX_CARD, INDEX_FILE, load_index
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.serving.config import ServingConfig, check_model_versions, load_serving_config
from recstack.serving.cooccurrence import CoOccurrence
from recstack.serving.popular import PopularLists

BUNDLE_CARD = "bundle.json"
SERVING_FILE = "serving.yaml"
POLICY_FILE = "policy.yaml"
FEATURES = "features"
RETRIEVAL = "retrieval"
RANKING = "ranking"
INDEX = "index"
COOCCURRENCE_FILE = "cooccurrence.npz"


def build_bundle(
    features_dir: str | Path,
    retrieval_model_dir: str | Path,
    ranking_model_dir: str | Path | None,
    index_dir: str | Path | None,
    out_dir: str | Path,
    policy: Policy | dict | None = None,
    serving: ServingConfig | dict | None = None,
) -> dict[str, Any]:
    """Assemble a bundle in ``out_dir`` (replaced) and return its card.

    Raises:
        ServingConfigError: an experiment names a model version that is not in the bundle.
    """
    config = serving if isinstance(serving, ServingConfig) else load_serving_config(serving)
    rules = policy if isinstance(policy, Policy) else load_policy(policy)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / FEATURES).mkdir(parents=True)
    src = Path(features_dir)
    for name in (SPEC_FILE, ITEMS_FILE, USERS_FILE, INTERACTIONS_FILE):
        shutil.copy2(src / name, out / FEATURES / name)
    if (src / "vocab").is_dir():
        shutil.copytree(src / "vocab", out / FEATURES / "vocab")
    shutil.copytree(retrieval_model_dir, out / RETRIEVAL)
    versions = {"retrieval": load_card(retrieval_model_dir).version}
    if ranking_model_dir is not None:
        shutil.copytree(ranking_model_dir, out / RANKING)
        versions["ranking"] = load_card(ranking_model_dir).version
    index_card: dict[str, Any] | None = None
    if index_dir is not None:
        (out / INDEX).mkdir()
        for name in (INDEX_FILE, INDEX_CARD):
            shutil.copy2(Path(index_dir) / name, out / INDEX / name)
        index_card = json.loads((out / INDEX / INDEX_CARD).read_text())
    check_model_versions(config, versions)
    tables = FeatureTables.load(out / FEATURES)
    interactions = read_interactions(out / FEATURES)  # the model columns only: GBs fewer on large logs
    sequences = Sequences.from_interactions(interactions, tables.spec.user_id.size)
    CoOccurrence.build(sequences, tables.items.n_items, config.n_neighbours).save(
        str(out / COOCCURRENCE_FILE)
    )
    (out / SERVING_FILE).write_text(
        yaml.safe_dump(config.model_dump(mode="json", by_alias=True), sort_keys=False)
    )
    (out / POLICY_FILE).write_text(
        yaml.safe_dump(rules.model_dump(mode="json", by_alias=True), sort_keys=False)
    )
    card = {
        "models": versions,
        "index": index_card,
        "policy": rules.name,
        "data_fingerprint": tables.spec.data_fingerprint,
        "n_users": tables.spec.user_id.size,
        "n_items": tables.spec.item_id.size,
        "n_interactions": interactions.height,
    }
    (out / BUNDLE_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


@dataclass(frozen=True)
class CodedColumn:
    """A string column indexed by user, held as codes into its distinct values: 5M users' regions are
    0.3 GB as Python strings, 20 MB as codes.

    Attributes:
        codes: ``(n_users + 1,)`` int32 index into ``values``; -1 = no value.
        values: ``(V,)`` the distinct strings, sorted.
    """

    codes: np.ndarray
    values: np.ndarray

    @classmethod
    def from_series(cls, column: pl.Series) -> CodedColumn:
        column = column.cast(pl.String)
        values = column.drop_nulls().unique().sort()
        # The dense rank (1-based, nulls kept) of a value is its position in the sorted distinct values.
        codes = (column.rank("dense").cast(pl.Int64) - 1).fill_null(-1).to_numpy().astype(np.int32)
        return cls(codes=codes, values=values.to_numpy().astype(object))

    def __getitem__(self, row: int) -> str | None:
        code = self.codes[row]
        return None if code < 0 else self.values[code]

    def __len__(self) -> int:
        return len(self.codes)


@dataclass
class Bundle:
    """A loaded bundle: models, index, lookups and the observed data the features are computed from."""

    card: dict[str, Any]
    config: ServingConfig
    policy: Policy
    tables: FeatureTables
    sequences: Sequences
    retriever: TwoTowerRetriever
    funnel: FunnelRanker | None
    ranking_context: RankingContext
    index: faiss.Index | None
    catalog: PolicyCatalog
    popular: PopularLists
    cooccurrence: CoOccurrence | None
    user_attributes: dict[str, CodedColumn]  # raw user columns by user index (cold-start segments)
    warnings: list[str] = field(default_factory=list)
    _users: dict[str, int] = field(default_factory=dict, repr=False)
    _items: dict[str, int] = field(default_factory=dict, repr=False)

    def user_index(self, user_id: str) -> int:
        """0 for unknown users."""
        return self._users.get(user_id, 0)

    def item_index(self, item_id: str) -> int:
        """0 for unknown items."""
        return self._items.get(item_id, 0)

    def seen(self, user: int) -> np.ndarray:
        """Every item the user interacted with in the snapshot (what ``filter_seen`` removes)."""
        s = self.sequences
        return (
            np.unique(s.items[s.offsets[user] : s.offsets[user + 1]]) if user > 0 else np.empty(0, np.int64)
        )


def load_bundle(bundle_dir: str | Path, splits: tuple[str, ...] | None = None) -> Bundle:
    """Load a bundle built by :func:`build_bundle`.

    Args:
        splits: restrict the interaction snapshot to these splits (e.g. the offline funnel's train + valid,
            for parity checks); default all of it: the service knows everything observed.
    """
    d = Path(bundle_dir)
    if not (d / BUNDLE_CARD).is_file():
        raise FileNotFoundError(f"{d} is not a serving bundle ({BUNDLE_CARD} missing): run the package stage")
    card = json.loads((d / BUNDLE_CARD).read_text())
    config = load_serving_config(d / SERVING_FILE)
    policy = load_policy(d / POLICY_FILE)
    tables = FeatureTables.load(d / FEATURES)
    interactions = read_interactions(d / FEATURES, splits)
    spec = tables.spec
    sequences = Sequences.from_interactions(interactions, spec.user_id.size)
    retriever = TwoTowerRetriever.load(d / RETRIEVAL, tables)
    funnel = None
    if (d / RANKING).is_dir():
        funnel = FunnelRanker.load(d / RANKING, retriever, config.n_candidates)
        funnel.n_candidates = min(funnel.n_candidates, spec.item_id.size)
    warnings: list[str] = []
    index = None
    if (d / INDEX).is_dir():
        index, index_card = load_index(d / INDEX)
        built_for = index_card.get("retrieval_version")
        if built_for != retriever.card.version:
            raise ValueError(
                f"{d / INDEX} was built from retrieval model {built_for}, but the bundle's model is "
                f"{retriever.card.version}: rebuild the index (dvc repro build_index)"
            )
    else:
        warnings.append("no ANN index in the bundle: known users are served popular items")
    segment_by = policy.cold_start.segment_by
    users = read_columns(d / FEATURES / USERS_FILE, [USER_IDX, *segment_by])
    missing = [a for a in segment_by if a not in users.columns]
    if missing:
        warnings.append(f"cold_start.segment_by {missing} are not user columns: those segments are skipped")
    popular = PopularLists.build(
        interactions, users, segment_by, policy.cold_start.popularity_window_days, config.popular_items
    )
    known = [a for a in segment_by if a in users.columns]
    frame = pl.DataFrame({USER_IDX: np.arange(spec.user_id.size + 1, dtype=np.int32)}).join(
        users.filter(pl.col(USER_IDX) > 0).unique(USER_IDX, keep="first").select(USER_IDX, *known),
        on=USER_IDX,
        how="left",
    )
    attributes = {a: CodedColumn.from_series(frame[a]) for a in known}
    del interactions  # 0.9 GB at 45M rows; Sequences and the popular lists hold what serving needs
    cooc = CoOccurrence.load(str(d / COOCCURRENCE_FILE)) if (d / COOCCURRENCE_FILE).is_file() else None
    return Bundle(
        card=card,
        config=config,
        policy=policy,
        tables=tables,
        sequences=sequences,
        retriever=retriever,
        funnel=funnel,
        ranking_context=RankingContext.build(tables, sequences, retriever.item_vectors),
        index=index,
        catalog=policy_catalog(tables, d / FEATURES),
        popular=popular,
        cooccurrence=cooc,
        user_attributes=attributes,
        warnings=warnings,
        _users={str(v): i + 1 for i, v in enumerate(spec.user_id.values.to_list())},
        _items={str(v): i + 1 for i, v in enumerate(spec.item_id.values.to_list())},
    )
