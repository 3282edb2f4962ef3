"""Random-weight models of real architectures, built directly on the target device.

Speed at scales whose weights are not available here (Llama-3-8B at 128K tokens) is measured on
models with the real shapes and random weights: timings depend on shapes, not values. Accuracy is
never measured on these. Construction happens under the target dtype and device, so an 8B model costs
16 GB once, not an fp32 copy first.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["SYNTHETIC", "build_synthetic"]

SYNTHETIC = {
    "llama-3-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                       rope_theta=500000.0, tie_word_embeddings=False),
    "llama-2-7b": dict(arch="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, head_dim=128, vocab_size=32000,
                       rope_theta=10000.0, tie_word_embeddings=False),
    "qwen2.5-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, head_dim=128, vocab_size=152064,
                       rope_theta=1000000.0, tie_word_embeddings=False),
    # the real 32K model's shapes (Qwen2.5-Coder-0.5B-Instruct; its GGUF has an untied output head)
    "qwen2.5-coder-0.5b": dict(arch="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                               num_attention_heads=14, num_key_value_heads=2, head_dim=64, vocab_size=151936,
                               rope_theta=1000000.0, tie_word_embeddings=False),
    # for tests of the benchmarks' structure on a CPU (fast); never a speed figure
    "tiny-llama": dict(arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512,
                       rope_theta=10000.0, tie_word_embeddings=False),
    "smollm2-135m": dict(arch="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                         rope_theta=100000.0, tie_word_embeddings=True),
}


@contextlib.contextmanager
def _default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_synthetic(name: str, *, device="cuda", dtype=torch.bfloat16, max_position_embeddings: int = 262144,
                    num_hidden_layers: int | None = None, seed: int = 0):
    """A transformers causal LM with ``name``'s shapes and random weights (std 0.02), eval, no grads."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from ..runtime.errors import ModelError

    if name not in SYNTHETIC:
        raise ModelError(f"unknown synthetic model {name!r}: choose one of {', '.join(SYNTHETIC)}")
    spec = dict(SYNTHETIC[name])
    arch = spec.pop("arch")
    theta = spec.pop("rope_theta")
    if num_hidden_layers is not None:
        spec["num_hidden_layers"] = num_hidden_layers
    Config, Model = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = Config(**spec, max_position_embeddings=max_position_embeddings, rope_theta=theta,
                 bos_token_id=1, eos_token_id=2, pad_token_id=2)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with _default_dtype(dtype), torch.device(device):
        model = Model(cfg)
    return model.eval().requires_grad_(False)
