"""The data layer: one canonical schema, source adapters, validation, splits."""
