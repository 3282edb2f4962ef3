"""Mistral: Llama's layer with a sliding window (the compact cache is capped at the window)."""

from .base import Family

FAMILY = Family("mistral", sliding_window=True)
