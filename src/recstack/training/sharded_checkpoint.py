"""Sharded checkpoints of distributed training (two-tower and DLRM), and their consolidation into the
single-file artifact that serving loads.

A checkpoint is a ``torch.distributed.checkpoint`` (DCP) directory: every rank writes the shards it owns
(the ShardedTensors of table- and column-wise tables and of their fused optimizer state), replicated
tensors (MLPs, data-parallel tables, AdamW state) are written once, and ``meta.json`` (rank 0) holds the
model kind and architecture, the settings, the step and the example sampler's random state. DCP reshards
on load, so a checkpoint loads under another sharding or world size, and into a plain single-process
:class:`TwoTower` or :class:`Ranker` (:func:`consolidate`), which is how the artifact is made.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from pydantic import BaseModel
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer

from recstack.features.spec import FeatureSpec
from recstack.jsonio import read_json
from recstack.models.artifact import ModelCard, ModelKind, save_artifact
from recstack.models.ranker import Ranker, RankerConfig
from recstack.models.two_tower import TwoTower, TwoTowerConfig

META_FILE = "meta.json"
# The training modules wrap the model as their ``model`` attribute: checkpoint keys carry this prefix.
MODEL_PREFIX = "model."
# Model kind -> (config class, model class): what rebuilds a checkpoint's model in one process.
MODEL_CLASSES: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    "two_tower": (TwoTowerConfig, TwoTower),
    "dlrm": (RankerConfig, Ranker),
}


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns whenever it runs without a process group, even when asked to: here that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


@dataclass
class CheckpointMeta:
    """What ``meta.json`` holds next to the DCP shards.

    Attributes:
        step: optimizer steps taken when the checkpoint was written (the ranker: epochs).
        config: the architecture (:class:`TwoTowerConfig` or :class:`RankerConfig`, by ``kind``).
        settings: the training settings (batch size, seed, learning rates, sharding...).
        sampler_state: ``numpy.random.Generator.bit_generator.state`` of the example sampler (random negatives),
            so a resumed run draws the negatives the uninterrupted run would have drawn.
        world_size: ranks that wrote the checkpoint (informative: any world size can load it).
        kind: the model kind (artifact kind): ``two_tower`` or ``dlrm``.
    """

    step: int
    config: BaseModel
    settings: dict[str, Any]
    sampler_state: dict[str, Any]
    world_size: int
    kind: ModelKind = "two_tower"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "step": self.step,
            "config": self.config.model_dump(),
            "settings": self.settings,
            "sampler_state": self.sampler_state,
            "world_size": self.world_size,
        }

    @staticmethod
    def is_complete(checkpoint_dir: str | Path) -> bool:
        """Whether the checkpoint was written to the end (``meta.json`` comes last)."""
        return (Path(checkpoint_dir) / META_FILE).is_file()

    @classmethod
    def read(cls, checkpoint_dir: str | Path) -> CheckpointMeta:
        path = Path(checkpoint_dir) / META_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: {checkpoint_dir} is not a recstack distributed checkpoint "
                "(expected a directory written by save_checkpoint)"
            )
        raw = read_json(path)
        kind = raw.get("kind", "two_tower")  # checkpoints of the first release are two-tower ones
        if kind not in MODEL_CLASSES:
            raise ValueError(
                f"{path}: unknown model kind {kind!r} (expected one of {', '.join(MODEL_CLASSES)})"
            )
        config_class, _ = MODEL_CLASSES[kind]
        return cls(
            step=int(raw["step"]),
            config=config_class(**raw["config"]),
            settings=raw["settings"],
            sampler_state=raw["sampler_state"],
            world_size=int(raw["world_size"]),
            kind=kind,
        )


def save_checkpoint(
    checkpoint_dir: str | Path, module: nn.Module, optimizer: KeyedOptimizer, meta: CheckpointMeta
) -> Path:
    """Write model and optimizer state with DCP (a collective: every rank calls it), then ``meta.json``.

    Args:
        checkpoint_dir: the directory (created).
        module: the DistributedModelParallel (or, single-process, the plain) training module.
        optimizer: the keyed optimizer of all parameters (fused embedding optimizer included).
        meta: step, config, settings and sampler state.
    """
    out = Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_single_process():
        dcp.save({"model": module.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(out))
    # dcp.save returns on every rank once the metadata is written, so meta.json marks a complete checkpoint.
    if not dist.is_initialized() or dist.get_rank() == 0:
        # Not write_json: sorting the keys would reorder the config's feature dicts, whose order is the
        # order of the towers' MLP inputs.
        (out / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    if dist.is_initialized():
        dist.barrier()
    return out


def load_checkpoint(
    checkpoint_dir: str | Path, module: nn.Module, optimizer: KeyedOptimizer
) -> CheckpointMeta:
    """Load a checkpoint in place into ``module`` and ``optimizer`` (a collective), resharding as needed."""
    meta = CheckpointMeta.read(checkpoint_dir)
    # KeyedOptimizer loads into existing state tensors; optimizer state is lazy, so create it first (the
    # dummy step may move the weights, which the model load below overwrites).
    optimizer.init_state()
    state = {"model": module.state_dict(), "optim": optimizer.state_dict()}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(checkpoint_dir))
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    return meta


def load_model(checkpoint_dir: str | Path) -> nn.Module:
    """The checkpoint's weights as one plain model (:class:`TwoTower` or :class:`Ranker`, by the
    checkpoint's kind) in this process (no process group needed).

    DCP assembles every table from the shards all ranks wrote; the optimizer state is not read.
    """
    meta = CheckpointMeta.read(checkpoint_dir)
    _, model_class = MODEL_CLASSES[meta.kind]
    model = model_class(meta.config)
    state = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    with _quiet_single_process():
        dcp.load({"model": state}, checkpoint_id=str(checkpoint_dir), no_dist=True)
    model.load_state_dict({k.removeprefix(MODEL_PREFIX): v for k, v in state.items()})
    model.eval()
    return model


def load_two_tower(checkpoint_dir: str | Path) -> TwoTower:
    """:func:`load_model` of a two-tower checkpoint."""
    model = load_model(checkpoint_dir)
    if not isinstance(model, TwoTower):
        raise TypeError(f"{checkpoint_dir} holds a {type(model).__name__}, not a two-tower model")
    return model


def consolidate(
    checkpoint_dir: str | Path,
    features_dir: str | Path,
    out_dir: str | Path,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """Turn a sharded checkpoint into the single-file model artifact that serving and evaluation load.

    Args:
        checkpoint_dir: a directory written by :func:`save_checkpoint`.
        features_dir: the ``features`` stage output the model was trained on (its spec is copied).
        out_dir: the artifact directory (replaced).
        training: what to record as the card's ``training`` section (default: the checkpoint's settings
            and step).

    Returns:
        The artifact's model card.
    """
    meta = CheckpointMeta.read(checkpoint_dir)
    model = load_model(checkpoint_dir)
    similarity = cast(TwoTowerConfig, meta.config).similarity if meta.kind == "two_tower" else None
    return save_artifact(
        out_dir,
        model,
        kind=meta.kind,
        config=meta.config,
        features_dir=features_dir,
        spec=FeatureSpec.load(features_dir),
        similarity=similarity,
        training=training or {"settings": meta.settings, "steps": meta.step},
    )
