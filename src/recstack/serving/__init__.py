"""Online serving: the funnel behind the BentoML service (``bentos/service.py``), usable in-process."""

from recstack.serving.bundle import Bundle, build_bundle, load_bundle
from recstack.serving.config import ServingConfig, load_serving_config
from recstack.serving.engine import Recommender, RequestError

__all__ = [
    "Bundle",
    "Recommender",
    "RequestError",
    "ServingConfig",
    "build_bundle",
    "load_bundle",
    "load_serving_config",
]
