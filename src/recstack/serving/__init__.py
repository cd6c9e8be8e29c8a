"""Online serving: the funnel behind the BentoML service (``bentos/service.py``), usable in-process.

The names below load on first use: the package's light modules (``workers``, ``balance``, ``eventlog``,
``schemas``) are imported by processes that never serve a model (the benchmark's floor service, the
monitoring jobs, the shared-slot table's helpers), and importing the engine would load torch and torchrec
into each of them (seconds per process).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recstack.serving.bundle import Bundle, build_bundle, load_bundle
    from recstack.serving.config import ServingConfig, load_serving_config
    from recstack.serving.engine import Recommender, RequestError

_WHERE = {
    "Bundle": "bundle",
    "build_bundle": "bundle",
    "load_bundle": "bundle",
    "ServingConfig": "config",
    "load_serving_config": "config",
    "Recommender": "engine",
    "RequestError": "engine",
}

__all__ = [
    "Bundle",
    "Recommender",
    "RequestError",
    "ServingConfig",
    "build_bundle",
    "load_bundle",
    "load_serving_config",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
