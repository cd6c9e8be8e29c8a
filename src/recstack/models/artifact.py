"""Model artifacts: one self-contained directory per trained model, everything serving needs.

Layout of ``<dir>/``:

* ``model.pt``: the ``state_dict`` (weights only; loaded with ``weights_only=True``).
* ``model.json``: a :class:`ModelCard`: kind, version, architecture config, similarity, the fingerprint
  of the training data, training settings and results.
* ``features/``: a copy of the feature spec and vocabularies the model was trained with, so that serving
  encodes requests exactly as training did, even after the features stage has moved on.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from recstack.features.spec import SPEC_FILE, FeatureSpec

MODEL_FILE = "model.pt"
CARD_FILE = "model.json"
FEATURES_SUBDIR = "features"
CARD_VERSION = 1

ModelKind = Literal["two_tower", "dlrm"]


class ModelCard(BaseModel):
    """Metadata saved next to the weights.

    Attributes:
        kind: which model class rebuilds the weights.
        version: first 12 hex digits of the SHA-256 of the weights: two artifacts with the same version
            hold the same model.
        config: the architecture config (``TwoTowerConfig`` / ``RankerConfig`` as a dict).
        similarity: retrieval similarity (``cosine`` / ``dot``); None for rankers.
        data_fingerprint: fingerprint of the canonical data the features (and the model) came from.
        training: settings and results of the training run (epochs, metrics, timings).
    """

    model_config = ConfigDict(extra="forbid")
    card_version: int = CARD_VERSION
    kind: ModelKind
    version: str
    config: dict[str, Any]
    similarity: str | None = None
    data_fingerprint: str
    training: dict[str, Any] = {}


def weights_version(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict (names, shapes, bytes), independent of how it was saved."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:12]


def save_artifact(
    out_dir: str | Path,
    model: torch.nn.Module,
    *,
    kind: ModelKind,
    config: BaseModel,
    features_dir: str | Path,
    spec: FeatureSpec,
    similarity: str | None = None,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """Write weights, card and a copy of the feature spec into ``out_dir`` (replaced if it exists)."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Straight to the file, not through a bytes buffer: a buffer and its copy were two more copies of the
    # weights in memory (1.7 GB each for a 5M-user model). A file object, not a path, so the archive inside
    # is named as before and the bytes do not depend on the file's name.
    with open(out / MODEL_FILE, "wb") as f:
        torch.save(state, f)
    card = ModelCard(
        kind=kind,
        version=weights_version(state),
        config=config.model_dump(),
        similarity=similarity,
        data_fingerprint=spec.data_fingerprint,
        training=training or {},
    )
    (out / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
    src = Path(features_dir)
    feat = out / FEATURES_SUBDIR
    feat.mkdir()
    shutil.copy2(src / SPEC_FILE, feat / SPEC_FILE)
    if (src / "vocab").is_dir():
        shutil.copytree(src / "vocab", feat / "vocab")
    return card


def write_card(directory: str | Path, card: ModelCard) -> None:
    """(Re)write ``model.json`` of an artifact, e.g. to add what the stage knows of its training run.

    Raises:
        ValueError: the card's version is not the weights' (the card would describe another model).
    """
    if card.version != weights_version(load_weights(directory)):
        raise ValueError(f"card version {card.version} does not match the weights in {directory}")
    (Path(directory) / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")


def load_card(directory: str | Path) -> ModelCard:
    """Read ``model.json`` of an artifact, with a clear error when it is missing or from another version."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {directory} is not a recstack model artifact")
    card = ModelCard.model_validate_json(path.read_text())
    if card.card_version != CARD_VERSION:
        raise ValueError(f"{path} has card version {card.card_version}; this recstack reads {CARD_VERSION}")
    return card


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an artifact (tensors only: nothing in the file is executed)."""
    return torch.load(Path(directory) / MODEL_FILE, map_location="cpu", weights_only=True)


def load_spec(directory: str | Path) -> FeatureSpec:
    """The feature spec the model was trained with."""
    return FeatureSpec.load(Path(directory) / FEATURES_SUBDIR)
