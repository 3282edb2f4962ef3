"""Medusa heads: the module, self-distilled training data, and the training loop."""
from .medusa import MedusaConfig, MedusaHeads

__all__ = ["MedusaConfig", "MedusaHeads"]
