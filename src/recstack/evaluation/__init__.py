"""Offline evaluation under protocol P1: the same metrics for every system."""
