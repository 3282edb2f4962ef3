"""Files for the EAGLE draft: our own drafter file (bounded loader) and the EAGLE-3 serving layout.

- ``save_eagle`` / ``load_eagle``: one safetensors file holding the draft's own weights under EAGLE-3's names
  and ``__metadata__`` keys ``accel.drafter.kind`` ("eagle"), ``accel.drafter.config`` (JSON of
  ``EagleConfig``), ``accel.fingerprint``, ``accel.base_model``, ``accel.provenance``. The loader checks every
  tensor name, shape and dtype against a freshly built draft of that config and raises ``PackError`` with one
  line. Packs store the draft through the drafter protocol (``eagle_drafter.EagleDrafter``, kind "eagle");
  this standalone file is what ``train-heads --drafter eagle`` writes without ``--pack``.
- ``export_eagle3``: ``model.safetensors`` + ``config.json`` as SGLang and vLLM load an EAGLE-3 draft
  (``LlamaForCausalLMEagle3``). Names and keys checked against
  sgl-project/sglang python/sglang/srt/models/llama_eagle3.py (``LlamaForCausalLMEagle3.load_weights``: ``d2t``
  -> hot token ids, ``t2d`` skipped, q/k/v and gate/up stacked, other names tried as-is then under ``model.``;
  the decoder layer is ``model.midlayer`` with ``hidden_norm``) and vllm-project/vllm
  vllm/model_executor/models/llama_eagle3.py (``Eagle3LlamaForCausalLM.load_weights``: ``midlayer.`` ->
  ``layers.0.``, ``d2t`` -> ``draft_id_to_target_id``, ``t2d`` skipped, ``lm_head`` at top level, everything
  else under ``model.``; ``embed_tokens`` optional, shared with the target when absent). Our draft shares the
  base's lm_head; the export writes it out as the draft's own, with identity vocabulary maps (d2t = 0: draft
  id == target id; t2d all True), because both loaders expect those tensors.
- Feature layers: with EAGLE-3's default (2, L//2, L-3) no ids are written, and both engines capture the same
  states (SGLang ``set_eagle3_layers_to_capture`` and vLLM ``get_eagle3_aux_hidden_state_layers`` both take the
  input of those layers). Other layers are written in each engine's convention: top-level
  ``eagle_aux_hidden_state_layer_ids`` = the layer whose *input* is captured (vLLM reads this first);
  ``eagle_config.eagle_aux_hidden_state_layer_ids`` = the layer whose *output* is captured (SGLang adds 1).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ..errors import PackError
from .eagle import EagleConfig, EagleConfigError, EagleDraft

__all__ = ["save_eagle", "load_eagle", "export_eagle3", "eagle3_tensor_names"]

_K = "accel."
KIND = "eagle"


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_eagle(path, draft: EagleDraft, *, fingerprint: str = "", base_model: str = "",
               provenance: dict | None = None) -> Path:
    """Write the draft's own weights + config (not the shared embedding / lm_head) atomically."""
    path = Path(path)
    meta = {_K + "drafter.kind": KIND, _K + "drafter.config": json.dumps(draft.config.to_dict(), sort_keys=True),
            _K + "fingerprint": fingerprint, _K + "base_model": base_model,
            _K + "provenance": json.dumps(provenance or {}, sort_keys=True, default=str)}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in draft.state_dict().items()}
    _atomic_save(tensors, path, meta)
    return path


def load_eagle(path, device="cpu", dtype: torch.dtype | None = None) -> tuple[EagleDraft, dict]:
    """-> (draft without base tensors: call ``attach_base``, metadata dict). Raises PackError on any problem."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PackError(f"EAGLE draft file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise PackError(f"{path} is not a readable safetensors file (truncated or corrupted?): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if meta.get(_K + "drafter.kind") != KIND:
        raise PackError(f"{path} holds no EAGLE draft (accel.drafter.kind is {meta.get(_K + 'drafter.kind')!r}); "
                        "train one with `accel train-heads --drafter eagle`")
    try:
        config = EagleConfig.from_dict(json.loads(meta.get(_K + "drafter.config", "")))
    except (json.JSONDecodeError, EagleConfigError) as e:
        raise PackError(f"{path}: bad EAGLE draft config ({e})") from None
    draft = EagleDraft(config)
    want = draft.state_dict()
    if set(want) != set(tensors):
        missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
        raise PackError(f"{path}: EAGLE draft tensors do not match its config (missing {missing[:3]}, "
                        f"unexpected {extra[:3]}); re-train or re-export the draft")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(want[k].shape) or not t.is_floating_point():
            raise PackError(f"{path}: tensor {k} has shape {tuple(t.shape)} {t.dtype}, expected "
                            f"{tuple(want[k].shape)} floating point; re-train or re-export the draft")
    draft.load_state_dict(tensors)
    draft.to(device=device, dtype=dtype or next(iter(tensors.values())).dtype)
    meta = {k[len(_K):]: v for k, v in meta.items() if k.startswith(_K)}
    try:
        meta["provenance"] = json.loads(meta.get("provenance", "{}"))
    except json.JSONDecodeError:
        raise PackError(f"{path}: accel.provenance is not JSON; re-save the draft") from None
    return draft, meta


def eagle3_tensor_names() -> list[str]:
    """The tensor names ``export_eagle3`` writes (EAGLE-3 checkpoint layout)."""
    mid = ["input_layernorm", "hidden_norm", "post_attention_layernorm"]
    proj = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    return (["fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d"]
            + [f"midlayer.{n}.weight" for n in mid + proj])


def export_eagle3(draft: EagleDraft, out_dir, lm_head_weight: torch.Tensor | None = None,
                  dtype: torch.dtype = torch.bfloat16, base_config=None) -> Path:
    """Write ``out_dir/model.safetensors`` + ``out_dir/config.json`` in the EAGLE-3 layout (see module doc).

    ``lm_head_weight``: the base's (V, H) lm_head (default: the one the draft is attached to)."""
    c = draft.config
    lm = lm_head_weight if lm_head_weight is not None else draft.lm_head_weight
    if lm is None or tuple(lm.shape) != (c.vocab_size, c.hidden_size):
        raise PackError(f"export needs the base lm_head of shape {(c.vocab_size, c.hidden_size)}; attach the base model")
    layers = list(c.feature_layers)
    L = c.target_num_layers
    default = [2, L // 2, L - 3]  # both engines' own default, unclamped
    if layers != default and min(layers) < 1:
        raise PackError(f"feature layer 0 (the embedding) cannot be expressed in SGLang's EAGLE-3 config; "
                        f"retrain with layers >= 1 (default {default})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PackError(f"--export target {out} exists and is not a folder; give a folder name")
    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in draft.state_dict().items()}
    tensors["lm_head.weight"] = lm.detach().to("cpu", dtype).contiguous().clone()
    V = c.vocab_size
    tensors["d2t"] = torch.zeros(V, dtype=torch.int64)   # target id = draft id + d2t[draft id]
    tensors["t2d"] = torch.ones(V, dtype=torch.bool)     # every target token is in the draft vocabulary
    assert sorted(tensors) == sorted(eagle3_tensor_names())
    cfg = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": c.hidden_size, "target_hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim, "num_hidden_layers": 1, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "rope_scaling": c.rope_scaling, "max_position_embeddings": c.max_position_embeddings,
        "vocab_size": V, "draft_vocab_size": V, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "norm_before_residual": False,  # our residual is the un-normed feature (EAGLE-3's)
        "torch_dtype": str(dtype).replace("torch.", ""),
        "eagle_config": {"use_aux_hidden_state": True},
    }
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if base_config is not None and getattr(base_config, key, None) is not None:
            cfg[key] = getattr(base_config, key)
    if layers != default:
        cfg["eagle_aux_hidden_state_layer_ids"] = layers                          # vLLM: input of layer i
        cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [i - 1 for i in layers]  # SGLang: output of i
    out.mkdir(parents=True, exist_ok=True)
    _atomic_save(tensors, out / "model.safetensors", {"format": "pt"})
    tmp = out / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "config.json")
    return out
