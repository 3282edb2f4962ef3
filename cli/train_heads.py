"""``accel train-heads``: Medusa heads on the frozen model (filled in by issue 5)."""

from .common import fail


def train_heads():
    """Train Medusa heads on the frozen base model and add them to a pack."""
    fail("train-heads is not implemented yet")
