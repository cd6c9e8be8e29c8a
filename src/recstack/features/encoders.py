"""Fitted feature encoders: id vocabularies, categorical, multi-categorical, text tokens, numeric.

Every encoder is fitted once on training data by the ``features`` stage, serialized into the feature spec
(``artifacts/features/feature_spec.json``; large vocabularies as Parquet beside it) and applied with the
same ``transform`` code by training, evaluation and the service. Index 0 is always the out-of-vocabulary /
padding bucket, so an unseen id or category is never an error, just index 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

OOV_INDEX = 0
INDEX_DTYPE = pl.Int32
_TOKEN_RE = r"[a-z0-9]+"


class Vocabulary(BaseModel):
    """Maps raw values (ids, categories, tokens) to dense indices ``1..size``; anything else maps to 0.

    Small vocabularies are stored inline; large ones (user / item ids) in ``<dir>/vocab/<name>.parquet``.

    Attributes:
        name: the feature name; also the Parquet file name.
        value_dtype: "int" or "str": the raw values' type, kept so ids keep the type the source gave.
        size: number of known values (the embedding table needs ``size + 1`` rows).
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    value_dtype: Literal["int", "str"]
    size: int
    inline: list[int | str] | None = None
    _values: pl.Series | None = PrivateAttr(default=None)

    # Above this many values the list goes to Parquet: a 5M-id JSON list would be slow and huge.
    INLINE_LIMIT: ClassVar[int] = 10_000

    @classmethod
    def fit(cls, values: pl.Series, name: str, min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Build from observed values: the most frequent first (ties by value), nulls ignored.

        Args:
            values: one row per observation (so counts mean frequency).
            name: feature name.
            min_count: values seen fewer times go to the OOV bucket.
            max_size: keep at most this many values (the most frequent).
        """
        counts = values.drop_nulls().value_counts(name="__count")
        return cls.from_counts(counts, values.name, name, min_count=min_count, max_size=max_size)

    @classmethod
    def from_counts(
        cls, counts: pl.DataFrame, column: str, name: str, min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Build from value counts (``column`` and ``__count``), e.g. added up over the parts of a long log.

        Same order as :meth:`fit`: the most frequent first, ties by value; nulls ignored.
        """
        counts = counts.filter(pl.col(column).is_not_null() & (pl.col("__count") >= min_count)).sort(
            ["__count", column], descending=[True, False]
        )
        if max_size is not None:
            counts = counts.head(max_size)
        vals = counts[column]
        dtype: Literal["int", "str"] = "int" if vals.dtype.is_integer() else "str"
        vocab = cls(name=name, value_dtype=dtype, size=vals.len())
        vocab._values = vals.cast(pl.Int64 if dtype == "int" else pl.String).rename("value")
        if vals.len() <= vocab.INLINE_LIMIT:
            vocab.inline = vocab._values.to_list()
        return vocab

    @property
    def values(self) -> pl.Series:
        """Known values in index order (index ``i + 1`` for ``values[i]``)."""
        if self._values is None:
            if self.inline is None:
                raise RuntimeError(
                    f"vocabulary {self.name!r} was loaded without its Parquet file: use load()"
                )
            self._values = pl.Series(
                "value", self.inline, dtype=pl.Int64 if self.value_dtype == "int" else pl.String
            )
        return self._values

    def save_values(self, directory: Path) -> None:
        """Write the values to ``directory/vocab/<name>.parquet`` when they are not inline."""
        if self.inline is None:
            (directory / "vocab").mkdir(parents=True, exist_ok=True)
            self.values.to_frame().write_parquet(directory / "vocab" / f"{self.name}.parquet")

    def load_values(self, directory: Path) -> None:
        """Read the values back from ``directory/vocab/<name>.parquet`` (no-op when inline)."""
        if self.inline is None:
            self._values = pl.read_parquet(directory / "vocab" / f"{self.name}.parquet")["value"]

    def lookup_expr(self, expr: pl.Expr) -> pl.Expr:
        """Polars expression mapping raw values to indices (Int32, OOV -> 0)."""
        target = pl.Int64 if self.value_dtype == "int" else pl.String
        idx = pl.int_range(1, self.size + 1, dtype=INDEX_DTYPE, eager=True)
        return expr.cast(target, strict=False).replace_strict(
            self.values, idx, default=OOV_INDEX, return_dtype=INDEX_DTYPE
        )

    def lookup(self, values: pl.Series | list) -> np.ndarray:
        """Indices of ``values`` as an int64 array of the same length (OOV -> 0)."""
        s = values if isinstance(values, pl.Series) else pl.Series("v", values)
        return s.to_frame("v").select(self.lookup_expr(pl.col("v")))["v"].to_numpy().astype(np.int64)

    def decode(self, indices: np.ndarray) -> list[int | str | None]:
        """Raw values of ``indices`` (None for the OOV index)."""
        vals = self.values
        return [vals[int(i) - 1] if 0 < int(i) <= self.size else None for i in indices]


class NumericEncoder(BaseModel):
    """A numeric feature: optional log1p, then standardized, plus quantile buckets for embedding.

    ``transform`` gives the standardized value (nulls -> 0.0, the mean); ``bucketize`` the bucket index in
    ``1..len(edges)+1`` (nulls -> 0), so the same column can feed a dense arch or an embedding.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    log: bool = False
    mean: float = 0.0
    std: float = 1.0
    edges: list[float] = Field(default_factory=list)

    @classmethod
    def fit(cls, values: pl.Series, name: str, log: bool = False, n_buckets: int = 10) -> NumericEncoder:
        """Fit mean / std (after log1p when ``log``) and ``n_buckets`` quantile bucket edges."""
        x = values.cast(pl.Float64).drop_nulls()
        if log:
            x = x.clip(lower_bound=0.0).log1p()
        mean = float(x.mean()) if x.len() else 0.0
        std = float(x.std()) if x.len() > 1 else 1.0
        qs = np.linspace(0, 1, n_buckets + 1)[1:-1]
        edges = sorted(set(np.quantile(x.to_numpy(), qs).tolist())) if x.len() else []
        return cls(name=name, log=log, mean=mean, std=std if std and std > 0 else 1.0, edges=edges)

    def _scaled_input(self, expr: pl.Expr) -> pl.Expr:
        x = expr.cast(pl.Float64)
        return x.clip(lower_bound=0.0).log1p() if self.log else x

    def transform_expr(self, expr: pl.Expr) -> pl.Expr:
        """Standardized value (Float32), nulls -> 0."""
        return ((self._scaled_input(expr) - self.mean) / self.std).fill_null(0.0).cast(pl.Float32)

    def bucketize_expr(self, expr: pl.Expr) -> pl.Expr:
        """Bucket index (Int32): 1 + number of edges below the value; null -> 0."""
        x = self._scaled_input(expr)
        if not self.edges:
            return pl.when(x.is_null()).then(OOV_INDEX).otherwise(1).cast(INDEX_DTYPE)
        above = pl.sum_horizontal([(x > e).cast(INDEX_DTYPE) for e in self.edges])
        return (
            pl.when(x.is_null()).then(pl.lit(OOV_INDEX, INDEX_DTYPE)).otherwise(above + 1).cast(INDEX_DTYPE)
        )

    @property
    def n_buckets(self) -> int:
        return len(self.edges) + 1


def tokenize_expr(expr: pl.Expr) -> pl.Expr:
    """Lower-case alphanumeric word tokens of a text column (List[String]); null text -> empty list."""
    return expr.fill_null("").str.to_lowercase().str.extract_all(_TOKEN_RE)


def list_lookup_expr(vocab: Vocabulary, expr: pl.Expr, max_len: int | None = None) -> pl.Expr:
    """Map a List column element-wise through ``vocab``, dropping OOV entries (List[Int32]).

    OOV entries are dropped rather than kept as 0 because these lists feed EmbeddingBags, where a run of
    zeros would just dilute the pooled vector.
    """
    mapped = expr.list.eval(vocab.lookup_expr(pl.element())).list.eval(
        pl.element().filter(pl.element() != OOV_INDEX)
    )
    return mapped.list.head(max_len) if max_len else mapped
