"""Time and check the fresh-prompt elementwise kernels (kernels.prefill_elementwise) against the eager ops
they replace, at the profiled shape: Qwen2.5-Coder-0.5B (hidden 896, 14 q / 2 kv heads, head_dim 64,
intermediate 4864), one 31744-token prompt, bf16 (GPU only).

    python scripts/gpu/bench_prefill_fat.py [--T 31744] [--layers 24] [--sweep] [--json out.json]

Rows: RoPE + k/v cache write, SiLU*up, RMSNorm's weight multiply (each eager vs Triton, with a bitwise
check: SiLU reports its mismatches, which should be 0 if libdevice expf == the expf PyTorch was built
with), then one whole ``layer_forward`` (fresh chunk, causal cuDNN) and a ``--layers``-layer random-weight
model's dense prefill, eager (ACCEL_FUSED_PREFILL=0) vs fused. The layer is also run with SiLU*up taken
from the eager formula: that must give the eager layer's bits exactly (RoPE / cache / RMSNorm / layout).
``--sweep`` times a few tile sizes of each kernel.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def _bits_report(got, ref):
    """(mismatching elements, max |diff| in units of ref's ulp)."""
    bad = int((got != ref).sum())
    if not bad:
        return 0, 0.0
    ulp = torch.finfo(ref.dtype).eps * ref.float().abs().clamp_min(torch.finfo(ref.dtype).tiny)
    return bad, float(((got.float() - ref.float()).abs() / ulp).max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=31744)
    ap.add_argument("--layers", type=int, default=24, help="layers of the whole-model prefill row (0: skip)")
    ap.add_argument("--rep", type=int, default=20)
    ap.add_argument("--sweep", action="store_true", help="also time a few tile sizes per kernel")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script (TRITON_INTERPRET=1, small --T)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("needs CUDA")

    from accel.bench.common import environment, time_ms
    from accel.bench.synthetic import build_synthetic
    import accel.kernels.prefill_elementwise as pe
    from accel.runtime import model as model_mod
    from accel.runtime.attention_meta import AttentionMeta
    from accel.runtime.model import CompactLM, _rotate_half, layer_forward

    dev, dt, T = a.device, torch.bfloat16, a.T
    Hq, Hkv, D, H, I = 14, 2, 64, 896, 4864
    t = lambda fn: time_ms(fn, warmup=3, rep=a.rep, device=dev)  # noqa: E731
    rows, checks = [], {}
    g = torch.Generator(device=dev).manual_seed(0)

    # -- RoPE + cache write -----------------------------------------------------------------------------
    qkv = torch.randn(1, T, (Hq + 2 * Hkv) * D, generator=g, device=dev).mul_(2).to(dt)  # the qkv GEMM output
    qk = qkv[..., :(Hq + Hkv) * D].view(1, T, Hq + Hkv, D)
    v = qkv[..., (Hq + Hkv) * D:].view(1, T, Hkv, D)
    inv = 1.0 / (1e6 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))  # Qwen2.5 theta
    emb = torch.outer(torch.arange(T, device=dev, dtype=torch.float32), inv).repeat(1, 2)
    cos, sin = emb.cos().to(dt)[None, :, None], emb.sin().to(dt)[None, :, None]  # (1, T, 1, D)
    rows_t = torch.zeros(1, 1, dtype=torch.long, device=dev)
    slots = torch.arange(T, device=dev)[None]
    S = -(-(T + 1) // 64) * 64
    kc, vc = torch.zeros(1, Hkv, S, D, dtype=dt, device=dev), torch.zeros(1, Hkv, S, D, dtype=dt, device=dev)
    kc2, vc2 = kc.clone(), vc.clone()

    def rope_eager():  # layer_forward's eager lines
        r = qk * cos + _rotate_half(qk) * sin
        kc[rows_t, :, slots] = r[:, :, Hq:]
        vc[rows_t, :, slots] = v
        return r[:, :, :Hq].transpose(1, 2), r[:, :, Hq:].transpose(1, 2), v.transpose(1, 2)

    ref = rope_eager()
    got = pe.rope_qkv(qk, v, cos, sin, rows_t, slots, kc2, vc2, Hq)
    checks["rope_bit_identical"] = all(torch.equal(x, y) for x, y in zip(got + (kc2, vc2), ref + (kc, vc)))
    rope_bytes = T * ((Hq + 2 * Hkv) * D + 2 * D + Hq * D + 4 * Hkv * D) * 2
    rows.append(("RoPE + k/v cache write", t(rope_eager), t(lambda: pe.rope_qkv(qk, v, cos, sin, rows_t, slots,
                                                                                  kc2, vc2, Hq)), rope_bytes))
    if a.sweep:
        for bt in (16, 32, 64, 128, 256):
            ms = t(lambda: pe.rope_qkv(qk, v, cos, sin, rows_t, slots, kc2, vc2, Hq, block_t=bt))
            print(f"  sweep rope block_t={bt}: {ms * 1e3:.1f} us")
    del qkv, qk, v, ref, got

    # -- SiLU * up ----------------------------------------------------------------------------------------
    gu = torch.randn(1, T, 2 * I, generator=g, device=dev).mul_(3).to(dt)  # the w13 GEMM output
    silu_eager = lambda: pe.silu_mul_reference(gu)  # noqa: E731  F.silu(g) * u on the strided halves
    bad, ulps = _bits_report(pe.silu_mul(gu), silu_eager())
    checks["silu_mismatches"], checks["silu_max_ulps"] = bad, ulps
    rows.append(("SiLU(gate) * up", t(silu_eager), t(lambda: pe.silu_mul(gu)), T * 3 * I * 2))
    if a.sweep:
        for bm, bn in ((4, 1024), (8, 512), (16, 256), (32, 256), (8, 256), (32, 128)):
            ms = t(lambda: pe.silu_mul(gu, block_m=bm, block_n=bn))
            print(f"  sweep silu_mul {bm}x{bn}: {ms * 1e3:.1f} us")
    del gu

    # -- RMSNorm weight -----------------------------------------------------------------------------------
    x = torch.randn(1, T, H, generator=g, device=dev).to(dt)
    w = torch.rand(H, generator=g, device=dev).add_(0.5).to(dt)
    xn = F.rms_norm(x, (H,), eps=1e-6)
    checks["rms_weight_bit_identical"] = torch.equal(pe.scale_rows(xn, w), w * xn)
    rows.append(("RMSNorm weight multiply", t(lambda: w * xn), t(lambda: pe.scale_rows(xn, w)), T * H * 2 * 2))
    if a.sweep:
        for bm, bn in ((8, 256), (16, 256), (32, 128), (64, 128), (16, 128)):
            print(f"  sweep scale_rows {bm}x{bn}: {t(lambda: pe.scale_rows(xn, w, bm, bn)) * 1e3:.1f} us")

    # -- one whole layer, then the model ------------------------------------------------------------------
    hf = build_synthetic("qwen2.5-coder-0.5b", max_position_embeddings=T + 64, num_hidden_layers=max(a.layers, 1),
                         device=dev)
    m = CompactLM.from_hf(hf)
    del hf
    m.setup_cache(1, T + 1)
    layer = m.layers[0]
    pos = torch.arange(T, device=dev)[None]
    lcos, lsin = m.rope_cos[pos].to(dt)[:, :, None], m.rope_sin[pos].to(dt)[:, :, None]
    x = torch.randn(1, T, H, generator=g, device=dev).to(dt)

    def one_layer(mode):
        model_mod.FUSED_PREFILL = mode
        return layer_forward(x, lcos, lsin, rows_t, pos, None, layer.k_cache[:1], layer.v_cache[:1],
                             *layer.weights(), m.n_head, m.n_kv, causal_self=True)

    y_eager = one_layer("0")
    y_fused = one_layer("1")
    silu_fast = pe.silu_mul
    pe.silu_mul = pe.silu_mul_reference
    try:
        checks["layer_bit_identical_with_eager_silu"] = torch.equal(one_layer("1"), y_eager)
    finally:
        pe.silu_mul = silu_fast
    checks["layer_mismatches"], checks["layer_max_ulps"] = _bits_report(y_fused, y_eager)
    rows.append(("one layer_forward (fresh, cuDNN)", t(lambda: one_layer("0")), t(lambda: one_layer("1")), None))

    if a.layers:
        ids = torch.randint(0, m.vocab_size, (1, T), device=dev)

        def prefill(mode):
            model_mod.FUSED_PREFILL = mode
            return m(ids, AttentionMeta.prompt(pos), last_only=True)[0]

        le, lf = prefill("0"), prefill("1")
        checks["model_logits_max_abs_diff"] = float((le.float() - lf.float()).abs().max())
        checks["model_same_argmax"] = bool(torch.equal(le.argmax(-1), lf.argmax(-1)))
        rows.append((f"{a.layers}-layer dense prefill", t(lambda: prefill("0")), t(lambda: prefill("1")), None))
    model_mod.FUSED_PREFILL = None

    name = torch.cuda.get_device_name() if dev == "cuda" else dev
    print(f"\nT={T}, Qwen2.5-Coder-0.5B shape, bf16, {name}")
    print(f"{'step':<34} {'eager ms':>9} {'fused ms':>9} {'speed-up':>8} {'fused GB/s':>10}")
    for name, e, f, nbytes in rows:
        bw = f"{nbytes / f / 1e6:10.0f}" if nbytes else f"{'':>10}"
        print(f"{name:<34} {e:9.3f} {f:9.3f} {e / f:7.2f}x {bw}")
    for k, val in checks.items():
        print(f"  {k}: {val}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(env=environment(), T=T, rows=[dict(step=n, eager_ms=e, fused_ms=f, bytes=b)
                                                         for n, e, f, b in rows], checks=checks), fh, indent=1)


if __name__ == "__main__":
    main()
