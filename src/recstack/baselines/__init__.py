"""Strong simple baselines scored by the same evaluation code as the learned models."""
