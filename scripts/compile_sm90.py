"""Compile every sparse-prefill Triton kernel for Hopper (sm_90) on a machine WITHOUT a GPU.

  .venv/bin/python scripts/compile_sm90.py

Uses the ptxas that ships with Triton; signatures mirror what the launcher specialises on a GPU
(pointers and strides divisible by 16, length-derived ints not specialised).  Per kernel / config it
prints compile success, shared memory, and for the attention kernel the number of wgmma instructions
and of 16-byte async copies in the PTX (0 would mean a slower path): a free check before spending GPU
time on a config sweep (KERNEL_CONFIGS in kernels/triton_sparse.py).
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from accel.kernels import triton_sparse as ts  # noqa: E402
from accel.kernels import index_fill as fill  # noqa: E402
from accel.kernels import vs_fused as vf  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def compile_one(fn, types, consts, **opts):
    names = fn.arg_names
    # constexpr parameters with a default (e.g. LOOP_STAGES=None) take it, as a launch would
    consts = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.default is not inspect.Parameter.empty
                 and p.name not in consts}, **consts}
    sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in names}
    div = [n for n in names if n not in consts and (sig[n].startswith("*") or (n.startswith("s") and sig[n] == "i32"))]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in div}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    t = time.time()
    k = triton.compile(src, target=TARGET, options=opts)
    ptx = k.asm["ptx"]
    print(f"{fn.__name__:>17} {str(consts):<95} {opts} {time.time() - t:5.1f}s shared {k.metadata.shared:>6} "
          f"wgmma {len(re.findall(r'wgmma.mma_async', ptx)):>3} cp.async16 {len(re.findall(r'cp.async.cg', ptx)):>3} "
          f"{_resources(k.asm['cubin'])}", flush=True)


def _resources(cubin: bytes) -> str:
    """Registers per thread and local-memory (spill) bytes from cuobjdump's resource report."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", out)
    return f"regs {m.group(1)} stack {m.group(2)} local {m.group(3)}" if m else ""


def main():
    only = os.environ.get("ONLY")   # e.g. ONLY=_vs_lists,_fill_rows: compile just those
    if only:
        global compile_one
        full, names = compile_one, set(only.split(","))
        compile_one = lambda fn, *a, **k: full(fn, *a, **k) if fn.__name__ in names else None  # noqa: E731
    est = {"Q": "*bf16", "K": "*bf16", "MS": "*fp32", "LS": "*fp32", "COL": "*fp32", "DP": "*fp32", "SCR": "*fp32",
           "HMAP": "*i32", "qk_scale": "fp32"}
    for d in (64, 128):
        for fn, gh in ((f, g) for f in (vf._vs_stats, vf._vs_sums) for g in (1, 2, 4, 8)):
            compile_one(fn, est, dict(LQ=64, GH=gh, BLOCK_N=64, HEAD_D=d, PREC="tf32", **(
                {"SKEW_HALVES": vf.SKEW_HALVES} if fn is vf._vs_sums else {})), num_warps=4 if gh == 1 else 8,
                        num_stages=vf.SCORES_STAGES)
    compile_one(vf._diag_combine, {"DP": "*fp32", "DIAG": "*fp32"}, dict(BLOCK_N=64, P=1024), num_warps=4)
    tiles = {"REL": "*i32", "TOTAL": "*i32", "SEGA": "*i32", "SEGX": "*i32", "COVER": "*u8"}
    for s_pad, nw in ((256, 4), (8192, 8)):
        compile_one(vf._slash_tiles, {"D": "*i32", **tiles}, dict(BLOCK_M=128, BLOCK_N=128, S_PAD=s_pad, P=256, CB=32),
                    num_warps=nw)
        # build_index's selection + tiles (one binary per S_PAD bucket, like _slash_tiles)
        compile_one(vf._vs_lists, {"COL": "*fp32", "DP": "*fp32", "BUD": "*i32", "VL": "*i32", "SL": "*i32", **tiles},
                    dict(BN_EST=64, BLOCK_M=128, BLOCK_N=64, S_PAD=s_pad, P=256, CB=32, CHUNK=vf.SELECT_CHUNK),
                    num_warps=8)
    compile_one(vf._block_lists, {**{k: "*i32" for k in ("REL", "COLS", "HEADS", "BO", "CI", "CC", "BC")},
                                  "COVER": "*u8"}, dict(BLOCK_M=128, BLOCK_N=64, CH=128), num_warps=4)
    for k_pad in (16, 64):
        compile_one(fill._fill_rows, {**{k: "*i32" for k in ("PARAMS", "BC", "BO", "CC", "CI")}, "SEL": "*i64"},
                    dict(BLOCK_M=128, BLOCK_N=64, PM=16, K_PAD=k_pad, CH=64), num_warps=4)
    attn = {**{k: "*bf16" for k in "QKVO"}, **{k: "*i32" for k in ("BC", "BO", "CC", "CI")}, "qk_scale": "fp32"}
    for (d, bm, bn), (nw, ns) in sorted(ts.KERNEL_CONFIGS.items()):
        try:
            compile_one(ts._sparse_attn_fwd, attn, dict(BLOCK_M=bm, BLOCK_N=bn, HEAD_D=d, HEAVY_FIRST=True,
                                                        ALWAYS_MASK=False, K_ROWS=True), num_warps=nw, num_stages=ns)
        except Exception as e:  # e.g. out of shared memory: say so, keep going
            print(f"  attention d={d} {bm}x{bn} w{nw} s{ns}: {type(e).__name__}: {str(e)[:160]}")


if __name__ == "__main__":
    main()
