"""TorchRec DistributedModelParallel plumbing for training: the process group, the sharding plan, the
optimizers, the candidate all-gather.

Kept apart from the training loop (:mod:`recstack.training.distributed`) so the ranking model can shard the
same way. On CPU the fused (in-backward) embedding optimizers are SGD and Adagrad only, so tables train with
Adagrad; row-wise sharding needs CUDA kernels, so ``auto`` never picks it on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec import EmbeddingBagCollection
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

Sharding = Literal["table_wise", "column_wise", "data_parallel", "auto"]
SHARDINGS: tuple[str, ...] = ("table_wise", "column_wise", "data_parallel", "auto")
# Row-wise sharding needs CUDA kernels: on CPU, "auto" lets the planner choose among these.
CPU_SHARDING_TYPES = (
    ShardingType.TABLE_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
    ShardingType.DATA_PARALLEL.value,
)
ADAGRAD_EPS = 1e-8  # set on the fused and the plain Adagrad alike (their defaults differ)
EMBEDDING_PARAM = ".embedding_bags."  # how an embedding table's parameter name reads


@dataclass(frozen=True)
class Cluster:
    """This process's place in the job.

    Attributes:
        rank / world_size: from torchrun (0 / 1 outside torchrun).
        device: where this rank computes.
        distributed: a process group is up (False: plain single-process training, no DMP).
        owns_group: this code started the process group, so it also ends it.
    """

    rank: int
    world_size: int
    device: torch.device
    distributed: bool = False
    owns_group: bool = False


def start_cluster() -> Cluster:
    """Join the torchrun job (env ``RANK`` / ``WORLD_SIZE``), or a one-process cluster outside torchrun.

    gloo on CPU, nccl with one GPU per local rank when CUDA is available.
    """
    if "WORLD_SIZE" not in os.environ and not dist.is_initialized():
        return Cluster(0, 1, torch.device("cpu"))
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Cluster(dist.get_rank(), dist.get_world_size(), device, distributed=True, owns_group=owns)


def sharding_constraints(
    module: nn.Module, sharding: Sharding, world_size: int
) -> dict[str, ParameterConstraints]:
    """Per-table planner constraints for a ``sharding`` setting.

    Column-wise shards are asked to be ``embedding_dim / world_size`` wide (when that is a multiple of 4,
    fbgemm's alignment), so the columns really spread over the ranks instead of staying in one shard.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {', '.join(SHARDINGS)}; got {sharding!r}")
    types = list(CPU_SHARDING_TYPES) if sharding == "auto" else [sharding]
    constraints = {}
    for ebc in (m for m in module.modules() if isinstance(m, EmbeddingBagCollection)):
        for table in ebc.embedding_bag_configs():
            width = table.embedding_dim // world_size
            split = sharding == "column_wise" and table.embedding_dim % world_size == 0 and width % 4 == 0
            constraints[table.name] = ParameterConstraints(
                sharding_types=types, min_partition=width if split else None
            )
    return constraints


def shard(
    module: nn.Module, sharding: Sharding, cluster: Cluster, embedding_lr: float, batch_size: int
) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Plan and shard ``module`` with DMP, keeping its (seeded) initial weights.

    The embedding tables get a fused Adagrad (applied in the backward pass); DMP builds the sharded tables
    afresh, so the unsharded weights are copied into the shards: every sharding, and single-process
    training, starts from the same model.
    """
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    tables = [p for n, p in module.named_parameters() if EMBEDDING_PARAM in n]
    _apply_optimizer_in_backward(torch.optim.Adagrad, tables, {"lr": embedding_lr, "eps": ADAGRAD_EPS})
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=cluster.world_size),
        kernel_config=KernelConfig(compute_device=cluster.device.type),
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        constraints=sharding_constraints(module, sharding, cluster.world_size),
        batch_size=batch_size,
    )
    sharders = get_default_sharders()
    plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module, device=cluster.device, plan=plan, sharders=sharders)
    _copy_weights(dmp, initial)
    return dmp, plan


@torch.no_grad()
def _copy_weights(dmp: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy unsharded weights into the sharded module's state (each rank its local shards)."""
    for name, value in dmp.state_dict().items():
        if isinstance(value, ShardedTensor):
            for s in value.local_shards():
                (r, c), (h, w) = s.metadata.shard_offsets, s.metadata.shard_sizes
                s.tensor.copy_(full[name][r : r + h, c : c + w])
        elif isinstance(value, torch.Tensor):
            value.copy_(full[name])
        else:
            raise TypeError(f"cannot copy initial weights into {name}: unsupported state type {type(value)}")


def plan_summary(plan: ShardingPlan | None) -> dict[str, dict[str, Any]]:
    """``{table: {"sharding_type", "compute_kernel", "ranks"}}`` of a plan (empty without one)."""
    if plan is None:
        return {}
    out = {}
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            out[table] = {
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": sorted(set(ps.ranks or [])),
            }
    return dict(sorted(out.items()))


def make_optimizer(module: nn.Module, embedding_lr: float, lr: float, weight_decay: float) -> KeyedOptimizer:
    """One keyed optimizer: fused Adagrad (sharded tables), Adagrad (unfused tables), AdamW (dense).

    The non-fused parameters come from ``in_backward_optimizer_filter``: DMP's parameters minus those its
    fused optimizer already updates in the backward pass.
    """
    rest = dict(in_backward_optimizer_filter(module.named_parameters()))
    tables = {k: p for k, p in rest.items() if EMBEDDING_PARAM in k}
    dense = {k: p for k, p in rest.items() if k not in tables}

    def adagrad(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adagrad(params, lr=embedding_lr, eps=ADAGRAD_EPS)

    def adamw(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    parts: list[tuple[str, KeyedOptimizer]] = []
    if isinstance(module, DistributedModelParallel):
        parts.append(("fused", module.fused_optimizer))
    if tables:
        parts.append(("tables", KeyedOptimizerWrapper(tables, adagrad)))
    parts.append(("dense", KeyedOptimizerWrapper(dense, adamw)))
    return CombinedOptimizer(parts)


def gather_candidates(c: torch.Tensor, cluster: Cluster) -> torch.Tensor:
    """``(W * n, D)``: every rank's ``(n, D)`` candidate embeddings in rank order, gradients flowing back."""
    if cluster.world_size == 1:
        return c
    # all_gather_single is differentiable: its backward sums each rank's gradient back to the owner.
    return funcol.all_gather_single(c, gather_dim=0, group=dist.group.WORLD)


# --- what every sharded training job does ------------------------------------------------------------------
def start_job(sharding: str, batch_size: int) -> Cluster:
    """Check the settings every sharded job shares, then join the torchrun job (:func:`start_cluster`).

    Raises:
        ValueError: an unknown sharding, or a global batch that does not split evenly over the ranks.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {', '.join(SHARDINGS)}; got {sharding!r}")
    cluster = start_cluster()
    if batch_size % cluster.world_size:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the world size {cluster.world_size}: every rank "
            "takes an equal slice of each global batch"
        )
    return cluster


def describe_plan(plan: ShardingPlan | None) -> str:
    """One line for the log: where each table went."""
    described = [f"{t}: {p['sharding_type']} on {p['ranks']}" for t, p in plan_summary(plan).items()]
    return "; ".join(described) or "single process, no DMP"


def backward_and_step(
    optimizer: KeyedOptimizer, loss_sum: torch.Tensor, local: int, cluster: Cluster
) -> float:
    """Backpropagate this rank's mean loss and step; return the global batch's mean loss.

    ``loss_sum`` sums the loss over this rank's ``local`` examples. Backpropagating the rank's mean is
    right because DDP and TorchRec average the gradients over the ranks (equal slices).
    """
    (loss_sum / local).backward()
    optimizer.step()
    optimizer.zero_grad()
    total = loss_sum.detach().clone()
    if cluster.distributed:
        dist.all_reduce(total)
    return float(total) / (local * cluster.world_size)


def end_job(cluster: Cluster) -> None:
    """Wait for every rank, then leave the process group (when this code started it)."""
    if cluster.distributed:
        dist.barrier()
        if cluster.owns_group:
            dist.destroy_process_group()
