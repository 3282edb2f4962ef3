"""Builders shared by test_hostile.py and test_fuzz.py: a valid pack for the tiny test model, a raw
safetensors writer that can put anything in the header, and a one-line-error checker for CLI results."""

from __future__ import annotations

import json
import struct

import torch

from accel.heads import MedusaConfig, MedusaHeads
from accel.runtime.pack import Pack, save_pack

H, V = 64, 300  # tests/conftest.py make_tiny_llama: hidden 64, vocab 300, 2 layers x 4 heads


def valid_pack(path, *, fingerprint="abc123", num_heads=2, projection="own", seed=0):
    cfg = MedusaConfig(num_heads=num_heads, num_layers=1, hidden_size=H, vocab_size=V, projection=projection)
    heads = MedusaHeads(cfg, torch.randn(V, H))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    patterns = [{"0": ["vertical_and_slash", 64, 128, 0.97], "1": ["stream_llm", 16, 64, 0.9],
                 "2": ["block_sparse", 2, 0, 0.8], "3": ["dense", 0, 0, 1.0]} for _ in range(2)]
    pack = Pack(base_model="tiny", fingerprint=fingerprint, patterns=patterns,
                patterns_info={"seq_len": 256, "scaling": "proportional"},
                medusa={**cfg.to_dict(), "tree": [[0], [0, 0], [1]]}, heads=heads.state_dict(),
                provenance={"accel_version": "0", "commands": {"train_heads": "accel train-heads"},
                            "train_heads": {"metrics": {"top1": [0.3, 0.2], "top5": [0.5, 0.4]}}})
    return save_pack(pack, path)


def read_raw(path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def write_raw(path, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def write_header(path, header: dict, data: bytes = b"") -> None:
    """A safetensors file with exactly this header (anything the format's framing allows)."""
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob + data)


def one_line_error(result, needle: str | None = None) -> str:
    """The CLI failed with exactly one 'error:' line and no traceback; returns that line."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    if needle is not None:
        assert needle in lines[0], lines[0]
    return lines[0]


def valid_eagle_pack(path, *, fingerprint="abc123", seed=0):
    """A format-2 pack whose drafter is an EAGLE-3 draft layer (kind "eagle") for a tiny random Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from accel.runtime.drafters.eagle import EagleConfig, EagleDraft
    from accel.runtime.drafters.eagle_drafter import EagleDrafter
    from accel.runtime.model import CompactLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    model = CompactLM.from_hf(LlamaForCausalLM(cfg).eval())
    d = EagleDraft(EagleConfig.for_base(model, intermediate_size=96), model.tok_embeddings, model.output.weight)
    dcfg, tensors = EagleDrafter(d.init_weights(seed, 0.1).eval(), top_k=4, depth=3, num_nodes=8).to_pack()
    return save_pack(Pack("tiny", fingerprint, patterns=None, drafter=dcfg, tensors=tensors, drafter_kind="eagle",
                          provenance={"accel_version": "0"}), path)
