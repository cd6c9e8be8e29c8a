"""Monitoring: served traffic (a simulator for replays), its joins, drift and quality reports."""
