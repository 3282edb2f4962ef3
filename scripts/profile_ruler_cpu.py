"""Per-phase wall time of ``accel bench quality --suite ruler`` per case pair (dense + sparse), on a CPU
with a tiny random Llama (2 layers, 4/2 heads, d=16) and a real tokenizer: the suite's own overheads
(case building, tokenization, decode loop, scoring) beside the model's work. On a CPU the "dense" and
"sparse" phases are the PyTorch reference kernels, so only the other phases say anything about a GPU.

    python scripts/profile_ruler_cpu.py TOKENIZER_DIR [--lengths 2048,4096] [--samples 4] [--batch 4]
    python scripts/profile_ruler_cpu.py TOKENIZER_DIR --cases-only --lengths 4096,31744

``--cases-only``: time building the cases alone (fast generator vs ``reference=True``, the original),
ms per case, per task and length. TOKENIZER_DIR: e.g. a folder where Qwen2.5's tokenizer was saved
(``AutoTokenizer.from_pretrained(src.path, gguf_file=...).save_pretrained(DIR)``).
"""

from __future__ import annotations

import argparse
import time

import torch


def _cases_only(tok, lengths, k):
    from accel.bench.ruler import TASKS, make_case

    for n in lengths:
        tot = {"fast": 0.0, "reference": 0.0}
        for task in TASKS:
            make_case(tok, task, n, 0)  # memo warm-up (once per tokenizer in a run)
            cells = []
            for label, ref in (("fast", False), ("reference", True)):
                t = time.perf_counter()
                for i in range(1, k + 1):
                    make_case(tok, task, n, i, reference=ref)
                dt = (time.perf_counter() - t) / k
                tot[label] += dt
                cells.append(f"{label} {1000 * dt:7.1f} ms")
            print(f"{n:6d} {task:16s} " + "  ".join(cells), flush=True)
        print(f"{n:6d} all 11 tasks: fast {1000 * tot['fast']:.0f} ms, reference {1000 * tot['reference']:.0f} ms "
              f"per case of each task", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tokenizer")
    ap.add_argument("--lengths", default="2048")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cases-only", action="store_true")
    ap.add_argument("--pattern", default="vertical_and_slash:64:512")
    ap.add_argument("--cpu-time", action="store_true",
                    help="one torch thread, and every timing in this process's CPU seconds (time.process_time) "
                         "instead of wall-clock: comparable between runs on a shared, busy machine")
    a = ap.parse_args()
    if a.cpu_time:
        torch.set_num_threads(1)
        time.perf_counter = time.process_time  # the suite's phase clocks read time.perf_counter
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    lengths = [int(x) for x in a.lengths.split(",")]
    if a.cases_only:
        return _cases_only(tok, lengths, a.samples)
    from accel.bench.prefill import uniform_patterns
    from accel.bench.ruler import TASKS
    from accel.bench.ruler_run import PHASES, perplexity_curve, ruler_suite
    from accel.runtime.model import CompactLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=max(lengths) + 256, tie_word_embeddings=True)
    compact = CompactLM.from_hf(LlamaForCausalLM(cfg).eval())
    name, s1, s2 = a.pattern.split(":")
    pats = uniform_patterns(2, 4, name, s1, s2)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    t0 = time.perf_counter()
    res = ruler_suite(compact, tok, list(TASKS), lengths, lambda n: pats, samples=a.samples, batch=a.batch, eos_ids=eos)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    perplexity_curve(compact, tok, lengths, lambda n: pats)
    ppl = time.perf_counter() - t1
    for n in lengths:
        rows = [r for r in res["rows"] if r["length"] == n]
        pairs = sum(r["samples"] for r in rows)
        ph = {p: sum(r["timing"][p] for r in rows) for p in PHASES}
        print(f"{n}: {pairs} case pairs, {1000 * sum(r['wall_s'] for r in rows) / pairs:.0f} ms per pair: "
              + ", ".join(f"{p} {1000 * v / pairs:.1f}" for p, v in ph.items()))
    print(f"suite {wall:.1f} s, perplexity {ppl:.1f} s")


if __name__ == "__main__":
    main()
