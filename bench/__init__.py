"""accel.bench — benchmarks, plots and synthetic models behind ``accel bench`` and the GPU recipes.

Sits on top of the library (``kernels`` <- ``runtime`` <- {``search``, ``heads``}); nothing in the
library imports it. Every figure in the docs comes from a JSON written here (``common.write_json``).
"""
