"""accel.search — offline per-head sparse-pattern search (`accel search-patterns`).

Public surface: `run_search` (one forward pass, per-layer search inside it), `search_layer` (one layer's
q/k), `validate` (dense vs sparse next-token agreement and KL), `scale_pattern` / `scale_layers` (the
runtime's rule to adapt searched sizes to the prompt length), calibration inputs, the cost helpers and
the recall scorer.  See docs/search.md.
"""
from .calibration import CalibrationError, calibration_ids, held_out_ids, user_text_ids
from .cost import candidates_for_budget, dense_cost, head_costs, minference_budget
from .score import recall_of_indexes, score_rows
from .search import (DEFAULT_LADDER, SCALING_RULES, SearchConfig, SearchError, SearchResult, run_search,
                     scale_layers, scale_pattern, search_layer, validate)

__all__ = [
    "SearchConfig", "SearchResult", "SearchError", "CalibrationError", "run_search", "search_layer",
    "validate", "scale_pattern", "scale_layers", "calibration_ids", "held_out_ids", "user_text_ids",
    "candidates_for_budget", "dense_cost", "head_costs", "minference_budget", "recall_of_indexes",
    "score_rows", "DEFAULT_LADDER", "SCALING_RULES",
]
