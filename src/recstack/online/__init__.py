"""Online state: users' events, kept current by feedback (embedded or Redis backends)."""
