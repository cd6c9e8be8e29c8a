"""Pipeline mechanics: turning DVC stages into Papermill notebook runs (and, later, other pipelines)."""
