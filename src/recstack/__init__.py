"""recstack: notebook-first, research-to-production recommender systems."""

__version__ = "0.1.0"
