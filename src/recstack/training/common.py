"""Pieces every training system shares: seeding, the Lightning trainer, timing, best-state tracking."""

from __future__ import annotations

import copy
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as L  # DVCLive's logger needs lightning.pytorch, never pytorch_lightning
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

# Lightning's advice about dataloader workers does not apply: batches are assembled by vectorized numpy
# on the main process, and extra workers on a 2-core machine only slow training down.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)


ENGINES = ("auto", "lightning", "dmp")  # what trains a stage; see :func:`sharded_engine`


def sharded_engine(engine: str, nproc: int) -> bool:
    """Whether a training stage runs as a TorchRec DistributedModelParallel job under torchrun.

    ``auto`` = DMP when ``nproc > 1``, else Lightning in this process; ``dmp`` = DMP even with one process
    (on one machine its fused sparse optimizers update only the rows a batch touches: 27x to 70x faster
    per step than the dense optimizers of the Lightning path on a 1M-item catalog); ``lightning`` = one
    process, early stopping on the stage's own schedule.

    Raises:
        ValueError: an unknown engine, ``nproc < 1``, or ``lightning`` with ``nproc > 1``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    if engine == "lightning" and nproc > 1:
        raise ValueError(
            f"engine 'lightning' trains in one process; nproc={nproc} needs engine 'dmp' or 'auto'"
        )
    return engine == "dmp" or nproc > 1


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; with the deterministic trainer, runs repeat bit for bit on a machine."""
    L.seed_everything(seed, workers=True, verbose=False)


class EpochTimer(Callback):
    """Wall time and examples per second of each training epoch."""

    def __init__(self, examples_per_epoch: int):
        self.examples_per_epoch = examples_per_epoch
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    def summary(self) -> dict[str, float]:
        """Mean seconds per epoch and examples per second (validation excluded)."""
        if not self.seconds:
            return {"epoch_seconds": 0.0, "examples_per_second": 0.0}
        mean = sum(self.seconds) / len(self.seconds)
        return {"epoch_seconds": mean, "examples_per_second": self.examples_per_epoch / mean}


class BestState(Callback):
    """Keeps (in memory) the model weights of the epoch with the best monitored validation value."""

    def __init__(self, monitor: str, mode: str = "max"):
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        self.best_epoch = 0
        self.state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the module's,
    # so the metrics the module logs at epoch end are only visible here.
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid_")}
        self.history.append({"epoch": trainer.current_epoch + 1, **metrics})
        value = metrics.get(self.monitor)
        if value is None:
            return
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch = value, trainer.current_epoch + 1
            self.state = copy.deepcopy(pl_module.state_dict())


def make_trainer(
    max_epochs: int,
    log_dir: str | Path | None,
    callbacks: list[Callback],
    *,
    monitor: str | None = None,
    patience: int = 3,
    validate: bool = True,
) -> L.Trainer:
    """A CPU Lightning trainer: deterministic, quiet, DVCLive metrics under ``log_dir`` (if given).

    Args:
        max_epochs: epoch limit.
        log_dir: DVCLive directory (``dvcyaml=False``: the project's dvc.yaml declares the plots itself).
        callbacks: extra callbacks (timers, best-state keepers).
        monitor: validation metric for early stopping (maximized); None = no early stopping.
        patience: epochs without improvement before stopping.
        validate: run the validation loop each epoch.
    """
    logger: Any = False
    if log_dir is not None:
        from dvclive.lightning import DVCLiveLogger

        logger = DVCLiveLogger(dir=str(log_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    cbs = list(callbacks)
    if monitor is not None:
        cbs.append(EarlyStopping(monitor=monitor, mode="max", patience=patience))
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        logger=logger,
        callbacks=cbs,
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if validate else 0,
        log_every_n_steps=50,
    )
