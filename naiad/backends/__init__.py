"""Backends: one small contract (`base`), a lazy registry, and the implementations."""
