"""``accel search-patterns``: offline search of each head's sparse pattern (filled in by issue 4)."""

from .common import fail


def search_patterns():
    """Search every head's best sparse-attention pattern and write it into a pack."""
    fail("search-patterns is not implemented yet")
