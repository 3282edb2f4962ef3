"""EAGLE draft training: the training-time-test unroll equals decode-time drafting, the loss against a naive
loop, learning on a toy, bit-exact resume, bad settings."""

import json

import pytest
import torch

from accel.heads.eagle_train import EagleTrainConfig, base_features, train_eagle, ttt_loss, unroll
from accel.heads.train import HeadsCheckpointError, HeadsConfigError
from accel.runtime.drafters.eagle import EagleConfig, EagleDraft

V, H = 128, 32


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=H, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, initializer_range=0.3, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def toy_sequences(n=64, length=40, seed=0):
    """Learnable: x_{t+1} = x_t + d (mod 100) + 10, with d in {1, 2, 3} fixed per sequence."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x, d = int(torch.randint(0, 100, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        out.append([10 + (x + d * t) % 100 for t in range(length)])
    return out


def small_cfg(**kw):
    base = dict(ttt_steps=3, steps=12, batch_size=4, seq_len=32, lr=1e-2, warmup=2, grad_accum=2,
                eval_fraction=0.1, seed=0, checkpoint_every=4, intermediate_size=48, init_std=0.1)
    base.update(kw)
    return EagleTrainConfig(**base)


def draft_for(model, seed=0):
    d = EagleDraft(EagleConfig.for_base(model.config, intermediate_size=48)).init_weights(seed, 0.2)
    d.attach_base(model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    return d.eval()


def test_unroll_equals_decode_time_drafting(model):
    """Unrolled step j at position t == the decode path: draft prefill over 0..t, then a chain of j draft
    queries (own outputs fed back, tokens t+2.., own KV in slots past the prefix)."""
    d = draft_for(model)
    T = 12
    ids = torch.randint(3, V, (1, T))
    with torch.no_grad():
        feats, _ = base_features(model, ids, None, d.config.feature_layers)
        hs = list(unroll(d, feats, ids, 4))
        for t in (0, 3, 7):
            cache = d.new_cache(1, 64)
            pos = torch.arange(t + 1)[None]
            slots = torch.arange(64)
            mask = (slots[None, :] <= pos[0, :, None])[None, None]
            _, h = d(feats[:, : t + 1], ids[:, 1: t + 2], pos, cache, pos, mask)
            h = h[:, -1:]
            assert torch.allclose(h[0, 0], hs[0][0, t], atol=1e-5)
            seen = slots <= t
            for j in range(1, 4):
                if t + j + 1 >= T:
                    break
                slot = t + j
                seen = seen | (slots == slot)
                _, h = d(h, ids[:, t + j + 1: t + j + 2], torch.tensor([[t + j]]), cache, torch.tensor([[slot]]),
                         seen[None, None, None])
                assert torch.allclose(h[0, 0], hs[j][0, t], atol=1e-5), (t, j)


def test_ttt_loss_matches_naive_loop(model):
    d = draft_for(model, seed=3)
    ids = torch.randint(3, V, (2, 10))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :4] = False
    with torch.no_grad():
        feats, logits = base_features(model, ids, None, d.config.feature_layers)
        for kind in ("kl", "ce"):
            got = ttt_loss(d, feats, ids, logits, mask, ttt_steps=3, loss_decay=0.7, loss=kind)
            ref = 0.0
            for j, h in enumerate(unroll(d, feats, ids, 3)):
                terms = []
                for b in range(2):
                    for t in range(10 - j - 2):
                        if not mask[b, t + j + 2]:
                            continue
                        q = torch.log_softmax(d.logits(h[b, t]).float(), -1)
                        p = torch.softmax(logits[b, t + j + 1].float(), -1)
                        terms.append((p * (p.log() - q)).sum() if kind == "kl" else -q[p.argmax()])
                ref += 0.7 ** j * torch.stack(terms).mean()
            assert torch.allclose(got, ref, atol=1e-5), kind


def test_loss_decreases_and_reports_per_step_acceptance(model):
    res = train_eagle(model, None, toy_sequences(), small_cfg(steps=30, lr=2e-2, loss="ce"), progress=False)
    h = res.loss_history
    assert sum(h[-5:]) / 5 < 0.85 * sum(h[:5]) / 5, h
    m = res.metrics
    assert len(m["train_accept"]) == 3 and len(m["eval_accept"]) == 3 and m["eval_tokens"] > 0
    assert m["eval_chain_tokens_per_step"] >= 1.0
    json.dumps(m)
    assert not any(p.requires_grad for p in model.parameters())  # the base stays frozen
    assert res.draft.lm_head_weight.data_ptr() == model.lm_head.weight.data_ptr()  # shared, not copied


def test_resume_after_kill_is_bitwise_identical(model, tmp_path):
    data = toy_sequences(40)
    ref = train_eagle(model, None, data, small_cfg(checkpoint_dir=str(tmp_path / "ref")), fingerprint="fp",
                      progress=False)

    class Killed(Exception):
        pass

    def kill_at_7(step, info):
        if step == 7:
            raise Killed

    d = str(tmp_path / "run")
    with pytest.raises(Killed):
        train_eagle(model, None, data, small_cfg(checkpoint_dir=d), fingerprint="fp", progress=False, on_step=kill_at_7)
    res = train_eagle(model, None, data, small_cfg(checkpoint_dir=d, resume=True), fingerprint="fp", progress=False)
    assert res.metrics["resumed_from_step"] == 4
    assert res.loss_history == ref.loss_history
    a, b = ref.draft.state_dict(), res.draft.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert res.metrics["eval_accept"] == ref.metrics["eval_accept"]
    with pytest.raises(HeadsCheckpointError, match="fingerprint"):
        train_eagle(model, None, data, small_cfg(checkpoint_dir=d, resume=True), fingerprint="other", progress=False)
    with pytest.raises(HeadsCheckpointError, match="ttt_steps"):
        train_eagle(model, None, data, small_cfg(checkpoint_dir=d, resume=True, ttt_steps=2), fingerprint="fp",
                    progress=False)


def test_bad_settings(model):
    for kw, needle in [({"ttt_steps": 0}, "ttt_steps"), ({"loss": "mse"}, "loss"), ({"seq_len": 4}, "seq_len"),
                       ({"aux_layers": (0, 1, 9)}, "outside"), ({"resume": True}, "checkpoint_dir")]:
        with pytest.raises(HeadsConfigError, match=needle):
            train_eagle(model, None, toy_sequences(8), small_cfg(**kw), progress=False)


def test_bf16_paths_run_on_cpu(model):
    # the CUDA recipe (bf16 autocast) and a bf16 base model without autocast both work device-agnostically
    res = train_eagle(model, None, toy_sequences(16), small_cfg(steps=2, precision="bf16"), progress=False)
    assert all(v == v for v in res.loss_history)  # no NaN
    import copy
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    res = train_eagle(m16, None, toy_sequences(16), small_cfg(steps=2), progress=False)
    assert res.draft.fc.weight.dtype == torch.float32  # fp32 master weights
    assert all(v == v for v in res.loss_history)
    assert res.draft.lm_head_weight.data_ptr() == m16.lm_head.weight.data_ptr()  # shared, not copied


def test_time_boxed_run_stops_checkpointed_and_resumes_bit_exact(model, tmp_path):
    """--max-minutes: the loop stops after its budget with a checkpoint at that step; --resume then ends
    exactly where an uninterrupted run does (one GPU call of <= 10 min per piece)."""
    data = toy_sequences(40)
    ref = train_eagle(model, None, data, small_cfg(), fingerprint="fp", progress=False)
    d = str(tmp_path / "run")
    part = train_eagle(model, None, data, small_cfg(checkpoint_dir=d, max_train_s=1e-9), fingerprint="fp",
                       progress=False)
    assert part.metrics["steps_done"] == 1 and len(part.loss_history) == 1
    res = train_eagle(model, None, data, small_cfg(checkpoint_dir=d, resume=True), fingerprint="fp", progress=False)
    assert res.metrics["resumed_from_step"] == 1 and res.metrics["steps_done"] == 12
    assert res.loss_history == ref.loss_history
    a, b = ref.draft.state_dict(), res.draft.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(HeadsConfigError, match="max_train_s"):
        small_cfg(max_train_s=0).validate()
