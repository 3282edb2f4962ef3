"""The repo root stays off sys.path while the tests run (pytest's --import-mode=importlib in
pyproject.toml; tests/conftest.py takes out the working directory that `python -m pytest` adds).
Its top-level folders are accel's subpackages, reached only as `accel.*`: on sys.path, kernels/ would
shadow Hugging Face's `kernels` package, which transformers >= 5.25 imports at start-up, and every
model import would fail."""
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_repo_root_is_not_on_sys_path():
    assert not [p for p in sys.path if Path(p or os.curdir).resolve() == ROOT]


def test_top_level_kernels_is_not_our_folder():
    spec = importlib.util.find_spec("kernels")   # Hugging Face's package, or none
    if spec is not None:
        where = spec.origin or next(iter(spec.submodule_search_locations or []), "")
        assert Path(where).resolve() not in (ROOT / "kernels", ROOT / "kernels" / "__init__.py"), where


def test_transformers_models_import():
    from transformers import LlamaForCausalLM  # noqa: F401  (>= 5.25: imports `kernels` on the way)
