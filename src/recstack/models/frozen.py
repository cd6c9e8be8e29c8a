"""Inference graphs: a model's layers after its embedding lookups, traced and frozen with TorchScript.

For weights that no longer change (a loaded artifact): the graph holds a copy of them and runs the same
aten ops as the modules, so the same values bit for bit, without the modules' per-call Python (nested
``nn.Module`` calls cost more than the matrix products of a request's few hundred rows).
"""

from __future__ import annotations

import torch
from torch import nn

FROZEN_WARMUP_RUNS = 3  # TorchScript's profiling runs of a frozen graph, done before it serves


def freeze(module: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """``module`` (in eval mode) traced on ``example`` and frozen, then warmed up.

    The trace reads the batch size from its input (``aten::size``), so one graph serves every batch size.
    TorchScript profiles a graph's first runs and optimizes it after them (~45 ms, then ~4 ms, where later
    runs take under 1 ms): those run here, not in a request, where they would overrun a stage's budget.
    """
    modes = [(m, m.training) for m in module.modules()]  # restored one by one: a wrapper's own mode
    module.eval()  # (a new module trains) must not leak into the model it wraps
    try:
        with torch.inference_mode(False), torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False).eval())
        with torch.inference_mode():
            for _ in range(FROZEN_WARMUP_RUNS):
                frozen(*example)
        return frozen
    finally:
        for m, training in modes:
            m.training = training
