"""scripts/results_page.py renders this session's GPU result files into docs/results.md.

The page is rendered from fixture JSONs (shaped like each producer's output: bench/step_cost.py,
bench/eagle.py, scripts/gpu_sparse_speed.py, `accel bench prefill`, `accel bench quality --suite
ruler`) in a tmp results dir; the tests check each new section's key numbers appear, that a section
whose file is absent is left out, and that the lm_head sentence follows the numbers."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {"device": "NVIDIA H200", "date": "2026-12-03T13:00:00+00:00", "torch": "2.11.0+cu130", "triton": "3.6.0"}


@pytest.fixture()
def page(tmp_path, monkeypatch):
    """The results_page module reading from an empty tmp results dir; ``put(name, obj)`` adds a file."""
    spec = importlib.util.spec_from_file_location("results_page", ROOT / "scripts" / "results_page.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = tmp_path / "results"
    res.mkdir()
    monkeypatch.setattr(mod, "R", res)
    monkeypatch.setattr(mod, "IMG", tmp_path / "img")

    def put(name, obj):
        (res / name).write_text(json.dumps(obj))

    mod.put = put
    return mod


def _proj(ratio, accepts=(2, 3, 4, 5), target=2.5):
    return {"step_over_plain": ratio, "speedup_at": {str(a): a / ratio for a in accepts},
            "accept_for_target": target * ratio, "target": target}


def step_cost(draft_step_ms=0.5820):
    """Shaped like scripts/step_cost_projection.py --json (numbers of the H200 run)."""
    plain = 4.9624
    eagle = []
    for k, dep, n, v, first in ((8, 5, 48, 6.6172, 0.6078), (10, 6, 60, 6.6624, 0.6072)):
        draft = first + (dep - 1) * draft_step_ms
        eagle.append(dict(top_k=k, depth=dep, nodes=n, tree_tokens=n + 1, tree_depth=4, verify_ms=v,
                          draft_first_ms=first, draft_step_ms=draft_step_ms, draft_ms=draft, draft_run="graph",
                          step_ms=v + draft, **_proj((v + draft) / plain)))
    return {"env": {**ENV, "command": "python scripts/step_cost_projection.py --synthetic llama-3-8b"},
            "bench": "step_cost", "model": "synthetic:llama-3-8b", "dtype": "torch.bfloat16", "device": "NVIDIA H200",
            "mode": "exact", "context": 512, "reps": 20, "accepts": [2, 3, 4, 5], "target": 2.5, "plain_step_ms": plain,
            "medusa": dict(heads=4, tree_tokens=64, verify_ms=6.6655, step_ms=7.0360, **_proj(7.0360 / plain)),
            "eagle": eagle}


def eagle_bench():
    """Shaped like `python -m accel.bench.eagle --json` (bench/eagle.py's run_eagle_bench)."""
    plain = dict(engine="plain (exact)", tokens_per_s=770.5, wall_tokens_per_s=731.2, step_ms=1.2978,
                 overhead_ms_per_request=12.6, first_capture_s=0.41, new_tokens=3072)
    med = dict(engine="medusa (exact)", tree_nodes=63, tokens_per_s=1353.7, wall_tokens_per_s=1158.4, step_ms=1.4702,
               overhead_ms_per_request=22.0, first_capture_s=0.93, new_tokens=3072, mean_accept=1.99,
               identical="12/12", step_cost=1.133, speedup_vs_plain=1.757, wall_speedup_vs_plain=1.584)
    eag = dict(engine="eagle (exact) k=8 depth=5 nodes=48", top_k=8, depth=5, num_nodes=48, tokens_per_s=1611.3,
               wall_tokens_per_s=1377.7, step_ms=1.6123, overhead_ms_per_request=31.5, first_capture_s=2.2,
               new_tokens=3072, mean_accept=2.61, identical="12/12", step_cost=1.242, speedup_vs_plain=2.091,
               wall_speedup_vs_plain=1.884)
    return dict(model="smollm2-135m", eagle="eagle.pack.safetensors", medusa="runtime/default_pack.safetensors",
                device="cuda", device_name="NVIDIA H200", dtype="torch.bfloat16", mode="exact", prompts=12,
                max_new_tokens=256, plain_tok_s=770.5, rows=[plain, med, eag], trees=[eag],
                errors=[dict(engine="eagle (exact) k=10 depth=6 nodes=60", error="RuntimeError: boom", traceback=[])],
                draft_metrics={"eval_accept": [0.71, 0.55]},
                environment={**ENV, "command": "python -m accel.bench.eagle --pack eagle.pack.safetensors --json x"})


def sparse_speed():
    """Shaped like scripts/gpu_sparse_speed.py's output (no env block: device/torch/triton at the top)."""
    best = dict(block_m=128, block_n=128, num_warps=8, num_stages=3, k_rows=True, total_ms=9.7313, kernel_ms=8.4882,
                index_ms=1.2411, kernel_flops=1, density=0.3752, kernel_tflops=390.3)
    kern = dict(n=32768, shape=[1, 32, 8, 128], pattern=["vertical_and_slash", 1000, 6096, 0.0], dense_cudnn_ms=13.0219,
                variants=[best], best=best, padding_share=1.0288, speedup_vs_cudnn=1.3381, kernel_eff_vs_cudnn=0.5779,
                index_share=0.1275, flex_ms=7.3398, flex_exact_ms=39.4057, speedup_vs_flex_exact=4.0494)
    k64 = dict(kern, shape=[1, 14, 2, 64], n=16384, dense_cudnn_ms=1.1402, flex_ms=None, flex_exact_ms=None,
               speedup_vs_flex_exact=None, speedup_vs_cudnn=0.5361,
               best=dict(best, block_n=64, num_warps=4, num_stages=2, total_ms=2.1234, kernel_ms=1.0655, index_ms=1.0579))
    prof = dict(shape=[1, 32, 8, 128], n=32768, blocks=[128, 128], budget=[1000, 6096],
                new_steps_ms=dict(scores_setup=0.076, scores_stats=0.099, scores_sums=0.2749, scores_diag=0.007,
                                  force_keeps=0.0163, topk_unsorted=0.1607, convert_sort_slash=0.2481,
                                  convert_slash_tiles=0.111, end=0.0254, total=1.2779),
                old_steps_ms=dict(scores=0.585, force_keeps=0.0162, topk_sorted=0.328, end=1.087, total=2.0161),
                new_graph_ms=0.6897, old_graph_ms=1.1525, new_equals_old_index=True, scores_max_abs_diff=3.7e-9,
                topk_agree_new_old=[1.0, 1.0], scores_knobs_ms=dict(rows256_waves2=0.4312, default_stages3=0.4016))
    sweep_ok = dict(shape=[1, 14, 2, 64], n=31744, cudnn_ms=3.98, skipped=2, rows=[
        dict(block_m=128, block_n=64, num_warps=4, num_stages=3, loop_stages=None, warp_specialize=False,
             kernel_ms=2.3456, eff=0.6612),
        dict(block_m=64, block_n=64, num_warps=4, num_stages=2, loop_stages=None, warp_specialize=False,
             kernel_ms=2.0101, eff=0.7715),
        dict(block_m=128, block_n=128, error="OutOfResources: shared memory")])
    return dict(device="NVIDIA H200", torch="2.11.0+cu130", triton="3.6.0", wall_s=139.9,
                new_lengths=[dict(shape=[1, 14, 2, 64], patterns="mixed", dense_backend=None, n=31001, warmup=False,
                                  added_ms=6.7734, new_binaries={"attn": 0})],
                graph={"vertical_slash": dict(captured=True, replay_equals_eager=True, replay_ms=2.3819, eager_ms=3.7347)},
                index_profile=[prof, dict(shape=[1, 14, 2, 64], n=16384, error="RuntimeError: out of memory")],
                kernels=[kern, k64],
                sweep=[sweep_ok, dict(shape=[1, 32, 8, 128], n=131072, cudnn_ms=float("nan"), rows=[], skipped="all")],
                suggested_kernel_configs={"64,64,64": [4, 2, 0.7715]}, best_config_per_length={"64,31744": "64x64w4s2"})


def qwen_prefill(speedups=(0.41, 0.77, 1.08, 1.52)):
    """Shaped like `accel bench prefill --json` (bench/prefill.py rows)."""
    rows = []
    for n, x in zip((4096, 8192, 16384, 31744), speedups):
        dense = n / 1000.0
        rows.append(dict(length=n, dense_ms=dense, exact_ms=None, sparse_ms=dense / x, speedup=x, predicted_work=0.321,
                         index_density_random_qk=0.9, index_ms=1.234, index_share=0.1))
    return {"env": {**ENV, "command": "accel bench prefill --model qwen2.5-coder-0.5b --lengths 4k,8k,16k,31k"},
            "bench": "prefill", "model": "qwen2.5-coder-0.5b", "dtype": "torch.bfloat16", "rows": rows}


def qwen_ruler_partial():
    """A `bench quality --suite ruler --seconds` file cut short: rows only, cases per row vary."""
    row = lambda task, n, dense, sparse, k: dict(task=task, length=n, samples=k, dense=dense, sparse=sparse,  # noqa: E731
                                                 delta=sparse - dense, identical_answers=0.5, density=0.31,
                                                 sparse_head_share=0.8, wall_s=1.0, examples=[])
    return {"env": {**ENV, "command": "accel bench quality --suite ruler --model qwen2.5-coder-0.5b"},
            "bench": "quality", "suite": "ruler", "model": "qwen2.5-coder-0.5b", "partial": True,
            "rows": [row("niah_single_1", 4096, 96.0, 88.0, 16), row("vt", 4096, 71.5, 70.25, 32)],
            "perplexity": [dict(text="docs", length=4096, dense=7.5, sparse=7.6, ratio=1.0133),
                           dict(text="book", length=4096, dense=21.25, sparse=21.5, ratio=1.0118)]}


def test_new_sections_render_their_key_numbers(page):
    page.put("step-cost-llama3-8b-h200.json", step_cost())
    page.put("eagle-bench-smollm2-h200.json", eagle_bench())
    page.put("eagle-accept-smollm2-h200.json", {"prompts": 3, "plain_tok_s": 1, "trees": [], "environment": ENV})
    page.put("sparse-speed-h200-run3.json", sparse_speed())
    page.put("prefill-qwen2.5-coder-0.5b-h200.json", qwen_prefill())
    page.put("ruler-qwen2.5-coder-0.5b-h200.json", qwen_ruler_partial())
    text = page.render()

    # 1. step cost: step/plain, projections, acceptance for 2.5x, and the lm_head sentence (the numbers support it)
    sc = text[text.index("## Speculative decoding at the 8B shape"):]
    assert "| Medusa, 4 heads, 64-token tree | 6.67 | 0.37 | 7.04 | 1.42 | 1.41x | 2.12x | 2.82x | 3.53x | 3.54 |" in sc
    assert "| EAGLE top-k 8, depth 5, 48 nodes | 6.62 | 2.94 | 9.55 | 1.93 | 1.04x | 1.56x | 2.08x | 2.60x | 4.81 |" in sc
    assert "Plain step: 4.96 ms" in sc and "needs at least 3.54 accepted tokens" in sc
    assert "dominated by its lm_head" in sc and "128,256-token vocabulary" in sc
    assert "results/step-cost-llama3-8b-h200.json" in sc

    # 2. the EAGLE bench supersedes the old acceptance file; wall x plain governs; failures are listed
    assert "eagle-accept-smollm2-h200.json" not in text
    eb = text[text.index("### Plain vs Medusa vs EAGLE"):]
    assert "| eagle (exact) k=8 depth=5 nodes=48 | 1611 | 1378 | 1.88 | 2.09 | 2.61 | 1.24 | 2.2 | 12/12 |" in eb
    assert "| medusa (exact) | 1354 | 1158 | 1.58 | 1.76 | 1.99 | 1.13 | 0.93 | 12/12 |" in eb
    assert "| plain (exact) | 770 | 731 | 1 | 1 | 1 | 1 | 0.41 | reference |" in eb
    assert "Fastest from request start: eagle (exact) k=8 depth=5 nodes=48, 1.88× plain" in eb
    assert "k=10 depth=6 nodes=60: failed (RuntimeError: boom)" in eb and "[0.71, 0.55]" in eb

    # 3. sparse speed: per-shape bench tables, index profile new vs old, sweep best configs, env from the top level
    sp = text[text.index("## Sparse prefill speed"):text.index("## Sparse attention kernels") if "## Sparse attention kernels" in text else None]
    assert "### 32q/8kv d=128" in sp and "### 14q/2kv d=64" in sp
    assert "| 32768 | 13 | 9.73 | 8.49 | 1.24 | 0.128 | 0.375 | 1.03 | 1.34 | 0.578 | 7.34 | 39.4 | 4.05 | 128x128 w8 s3 |" in sp
    assert "| 32q/8kv d=128 | 32768 | 1.28 | 0.69 | 2.02 | 1.15 | 1.58 | 1.67 |" in sp  # new/old eager/graph, x
    assert "default_stages3 0.402" in sp and "failed: RuntimeError: out of memory" in sp
    assert "| 14q/2kv d=64 | 31744 | 3.98 | 64x64 w4 s2 | 2.01 | 0.771 | 2 | 1 | 2 |" in sp
    assert "none ran" in sp and "(64,64,64): (4, 2) eff 0.771" in sp
    assert "| 14q/2kv d=64 | mixed | 31001 | 6.77 | 0 |" in sp and "replay 2.38 ms vs eager 3.73 ms" in sp
    assert "NVIDIA H200" in sp and "torch 2.11.0+cu130" in sp and "`python scripts/gpu_sparse_speed.py`" in sp

    # 4. Qwen: prefill TTFT dense vs sparse with its break-even, and the partial RULER file's rows
    lp = text[text.index("## Long-context prefill on a real model"):]
    assert "| 31744 | 31.7 | 20.9 | 1.52× | 0.321 | 1.23 | 0.1 |" in lp
    assert "`sparse_min_len = 16384`" in lp
    ru = text[text.index("### qwen2.5-coder-0.5b (16-32 cases per task and length; a partial run"):]
    assert "| niah_single_1 | 96.0 | 88.0 |" in ru and "| **average** | **83.8** | **79.1** |" in ru
    assert "| book | 4096 | 21.2 | 21.5 | 1.0118 |" in ru and "| docs | 4096 | 7.5 | 7.6 | 1.0133 |" in ru
    assert ru.index("| book | 4096") < ru.index("| docs | 4096")  # grouped by text


def test_sections_are_left_out_when_their_files_are_absent(page):
    text = page.render()
    for heading in ("## Speculative decoding at the 8B shape", "### Plain vs Medusa vs EAGLE", "## Sparse prefill speed",
                    "## Long-context prefill on a real model", "## Long-context fidelity"):
        assert heading not in text
    assert text.startswith("# Results")


def test_old_sparse_file_still_renders_and_the_older_eagle_text_stays_without_the_bench(page):
    d = sparse_speed()
    for k in ("index_profile", "sweep", "suggested_kernel_configs", "best_config_per_length"):
        d.pop(k)
    d["graph"] = {"captured": False, "error": "RuntimeError: capture failed"}
    d["env"] = {**ENV, "command": "python3 scripts/gpu_sparse_speed.py --out x"}
    page.put("sparse-speed-h200.json", d)
    page.put("eagle-accept-smollm2-h200.json", {"prompts": 3, "plain_tok_s": 700, "environment": ENV,
                                                "trees": [dict(top_k=8, depth=5, num_nodes=48, mean_accept=2.5,
                                                               identical="3/3", eager_tok_s=99.0)]})
    text = page.render()
    assert "after issue 12's first changes" in text and "Index estimation" not in text
    assert "captured False: RuntimeError: capture failed" in text and "2026-12-03" in text
    assert "eagle-accept-smollm2-h200.json" in text and "top-k 8, depth 5, 48 nodes" in text


def test_lm_head_sentence_only_when_the_timings_support_it(page):
    # a draft step no dearer than one base layer: nothing outside the layer to attribute to the lm_head
    page.put("step-cost-llama3-8b-h200.json", step_cost(draft_step_ms=0.16))
    assert "lm_head" not in page.step_cost_section()
    d = step_cost()
    d["model"] = "synthetic:llama-3-8b (2 layers)"  # a layer override: the per-layer bound is unknown
    page.put("step-cost-llama3-8b-h200.json", d)
    assert "lm_head" not in page.step_cost_section()


def test_break_even_is_the_start_of_the_winning_tail(page):
    rows = qwen_prefill((1.2, 0.9, 1.1, 1.3))["rows"]
    assert page.break_even(rows) == 16384
    assert page.break_even(qwen_prefill((0.5, 0.6, 0.7, 0.9))["rows"]) is None
    page.put("prefill-qwen2.5-coder-0.5b-h200.json", qwen_prefill((0.5, 0.6, 0.7, 0.9)))
    assert "beats dense at no measured length up to 31744" in page.long_prefill_section()
    d = copy.deepcopy(qwen_prefill())
    d["rows"] = []
    page.put("prefill-qwen2.5-coder-0.5b-h200.json", d)
    assert page.long_prefill_section() == ""
