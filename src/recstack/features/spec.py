"""The feature spec: every fitted encoder plus the settings that produced them, saved with the features.

Training, evaluation and serving load the spec (``FeatureSpec.load(artifacts/features)``) and call the
transforms in :mod:`recstack.features.transform`, so online features are computed by the same code.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from recstack.features.encoders import NumericEncoder, Vocabulary

SPEC_FILE = "feature_spec.json"
SPEC_VERSION = 1


class FeatureSpec(BaseModel):
    """Fitted encoders and settings of one ``features`` run.

    Attributes:
        reference_time: the "now" of the fitted features: the last timestamp of the fit data (train +
            valid). Popularity windows and recency are computed as of this time.
        user_id / item_id: id vocabularies (index 0 = unknown user / item).
        user_categorical / item_categorical: per attribute column, its vocabulary.
        user_numeric / item_numeric: per numeric column (attributes and activity statistics), its encoder.
        categories: vocabulary of item categories (multi-hot, e.g. genres).
        title_tokens: vocabulary of title word tokens.
        skipped_columns: attribute columns not encoded, with the reason.
        data_fingerprint: hash of the input tables (changes whenever the data does).
    """

    model_config = ConfigDict(extra="forbid")
    version: int = SPEC_VERSION
    reference_time: datetime
    split: dict[str, str | float | int | None]
    history_length: int
    title_max_tokens: int
    popularity_windows_days: list[int]
    user_id: Vocabulary
    item_id: Vocabulary
    user_categorical: dict[str, Vocabulary] = Field(default_factory=dict)
    user_numeric: dict[str, NumericEncoder] = Field(default_factory=dict)
    item_categorical: dict[str, Vocabulary] = Field(default_factory=dict)
    item_numeric: dict[str, NumericEncoder] = Field(default_factory=dict)
    categories: Vocabulary
    title_tokens: Vocabulary
    skipped_columns: dict[str, str] = Field(default_factory=dict)
    data_fingerprint: str = ""

    def vocabularies(self) -> list[Vocabulary]:
        """Every vocabulary in the spec (for saving and loading their values)."""
        return [
            self.user_id,
            self.item_id,
            self.categories,
            self.title_tokens,
            *self.user_categorical.values(),
            *self.item_categorical.values(),
        ]

    def cardinalities(self) -> dict[str, int]:
        """Embedding-table sizes (``size + 1`` for the OOV row) of every categorical feature, by name."""
        out = {v.name: v.size + 1 for v in self.vocabularies()}
        for enc in (*self.user_numeric.values(), *self.item_numeric.values()):
            out[f"{enc.name}_bucket"] = enc.n_buckets + 1
        return out

    def save(self, directory: str | Path) -> Path:
        """Write ``feature_spec.json`` (and large vocabularies as Parquet) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for vocab in self.vocabularies():
            vocab.save_values(d)
        path = d / SPEC_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FeatureSpec:
        """Read a spec written by :meth:`save`, with every vocabulary ready for lookups."""
        d = Path(directory)
        path = d / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: run the features stage (dvc repro features) first"
            )
        spec = cls.model_validate_json(path.read_text())
        if spec.version != SPEC_VERSION:
            raise ValueError(
                f"{path} has feature spec version {spec.version}; this recstack reads {SPEC_VERSION}"
            )
        for vocab in spec.vocabularies():
            vocab.load_values(d)
        return spec
