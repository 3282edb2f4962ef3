"""accel.search: kernel-aware equal-cost candidates, recall scoring vs a float64 reference, the search on
synthetic heads of known shape, length scaling, pack merging and the CLI's one-line errors."""

import math

import pytest
import torch
from typer.testing import CliRunner

from accel.cli import app
from accel.kernels import HeadPattern, build_index, kept_mask, kernel_cost
from accel.search import (SearchConfig, SearchError, candidates_for_budget, dense_cost, head_costs,
                          recall_of_indexes, run_search, scale_pattern, search_layer, score_rows)
from accel.search.cost import cost_tolerance, tile_flops
from accel.search.search import _VerticalSlashCache, _oom_as_error

runner = CliRunner()


def _one_line_error(result, needle):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert needle in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# cost
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,budget", [(2048, 0.3), (4096, 0.1), (3000, 0.2)])
def test_static_candidates_have_equal_kernel_cost_within_a_block(n, budget):
    d, block = 64, 64
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, n, d), torch.randn(1, 1, n, d)
    target = budget * dense_cost(n, d, block)
    one_tile_per_qblock = math.ceil(n / block) * tile_flops(d, block)
    cands = candidates_for_budget(n, d, budget, block)
    assert {p.name for p in cands} == {"stream_llm", "block_sparse", "vertical_and_slash"}
    for p in cands:
        idx = build_index(q, k, [p, p], block, block)
        per_head = head_costs(idx, d)
        assert float(per_head.sum()) == kernel_cost(idx, n, d)          # our split == the kernels' cost
        if p.name != "vertical_and_slash":                              # data-independent: exact
            assert abs(float(per_head[0]) - target) <= one_tile_per_qblock, (p, float(per_head[0]) / target)


def test_vertical_slash_measured_cost_is_held_to_the_budget():
    """Scattered diagonals cost more tiles than a band; the search shrinks those heads to the budget."""
    n, d, budget = 2048, 64, 0.2
    torch.manual_seed(1)
    q, k = torch.randn(1, 4, n, d) * 3, torch.randn(1, 2, n, d)      # random: slashes are scattered
    cfg = SearchConfig(seq_len=n, budget=budget)
    pats, dens, _ = search_layer(q, k, cfg)
    slack = cost_tolerance(n, d) / dense_cost(n, d)
    assert all(x <= budget + slack + 1e-9 for x in dens), dens


def test_vertical_slash_cache_equals_build_index():
    n, d = 1024, 32
    torch.manual_seed(2)
    q, k = torch.randn(1, 4, n, d), torch.randn(1, 2, n, d)
    cache = _VerticalSlashCache(q, k, 64, d ** -0.5, 64)
    for pats in ([HeadPattern("vertical_and_slash", 100, 200)] * 4,
                 [HeadPattern("vertical_and_slash", v, s) for v, s in ((0, 64), (40, 100), (200, 7), (64, 300))]):
        ours = kept_mask(cache.index(pats))
        ref = kept_mask(build_index(q, k, pats, 64, 64))
        assert torch.equal(ours, ref)


# ---------------------------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------------------------
def test_recall_matches_naive_float64_reference():
    n, d = 384, 16
    torch.manual_seed(3)
    q, k = torch.randn(1, 4, n, d, dtype=torch.float64) * 2, torch.randn(1, 2, n, d, dtype=torch.float64)
    pats = [HeadPattern("stream_llm", 32, 70), HeadPattern("vertical_and_slash", 20, 40),
            HeadPattern("block_sparse", 2), HeadPattern("dense")]
    idx = build_index(q, k, pats, 32, 32)
    rows = score_rows(n, 0.25)
    ours = recall_of_indexes(q, k, [idx], rows, max_elems=4096)[0]      # tiny chunks: exercise chunking
    # naive: full causal softmax in float64, N×N mask from kept_mask
    s = torch.einsum("bhnd,bhmd->bhnm", q, k.repeat_interleave(2, 1)) * d ** -0.5
    s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    p = torch.softmax(s, -1)[:, :, rows]
    ref = (p * kept_mask(idx, n, rows=rows)).sum(-1).mean((0, 2))
    assert torch.allclose(ours, ref, atol=1e-9), (ours, ref)
    assert ours[3] == 1.0


# ---------------------------------------------------------------------------------------------
# the search picks the obviously right pattern
# ---------------------------------------------------------------------------------------------
def _synthetic_heads(n=1024, d=64, seed=0):
    """Three query heads (one kv head each) whose attention is A-shaped, vertical, block-like."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(n, dtype=torch.float64)
    q = torch.zeros(1, 3, n, d, dtype=torch.float64)
    k = torch.zeros(1, 3, n, d, dtype=torch.float64)
    # locality from many low frequencies: q_i·k_j = a Σ cos(w (i - j)), peaked at i = j (width ~ 40)
    w = torch.rand(24, generator=g, dtype=torch.float64) * (math.pi / 40)
    loc_q = torch.cat([torch.cos(pos[:, None] * w), torch.sin(pos[:, None] * w)], 1)  # (n, 48)
    # head 0, A-shape: sink (first 16 keys) + local
    q[0, 0, :, :48], k[0, 0, :, :48] = loc_q * 2.5, loc_q * 2.5
    q[0, 0, :, 60], k[0, 0, :16, 60] = 1.0, 120.0
    # head 1, vertical: 48 scattered key columns every query looks at, + local
    cols = torch.randperm(n - 64, generator=g)[:48] + 32
    q[0, 1, :, :48], k[0, 1, :, :48] = loc_q * 2.0, loc_q * 2.0
    q[0, 1, :, 60], k[0, 1, cols, 60] = 1.0, 120.0
    # head 2, block-like: each query block looks at 2 earlier key blocks sharing its "topic"
    topics = torch.nn.functional.normalize(torch.randn(n // 64, d, generator=g, dtype=torch.float64), dim=-1)
    for m in range(n // 64):
        picks = [m] + ([(m * 7 + 3) % m] if m > 0 else [])
        t = topics[picks].sum(0)
        q[0, 2, m * 64:(m + 1) * 64] = t * 12.0
        k[0, 2, m * 64:(m + 1) * 64] = topics[m] * 12.0 + 0.02 * torch.randn(64, d, generator=g, dtype=torch.float64)
        if m > 0:
            b = (m * 7 + 3) % m
            k[0, 2, b * 64:(b + 1) * 64] += 0  # shared topic blocks already carry topics[b]
    return q.float(), k.float()


def test_search_picks_the_obviously_right_pattern():
    q, k = _synthetic_heads()
    pats, dens, _ = search_layer(q, k, SearchConfig(seq_len=q.shape[2], budget=0.3))
    assert [p.name for p in pats] == ["stream_llm", "vertical_and_slash", "block_sparse"], pats
    assert all(p.score > 0.9 for p in pats), pats


def test_kinds_restrict_the_candidates():
    """--kinds: the block-like head, denied block-sparse, gets the best of what is allowed; the others
    keep their obvious kinds; the pack records the restriction; a dense-only or unknown list is refused."""
    q, k = _synthetic_heads()
    cfg = SearchConfig(seq_len=q.shape[2], budget=0.3, kinds=("vertical_and_slash", "stream_llm"))
    cfg.check()
    pats, _, _ = search_layer(q, k, cfg)
    assert [p.name for p in pats[:2]] == ["stream_llm", "vertical_and_slash"], pats
    assert pats[2].name in ("vertical_and_slash", "stream_llm"), pats
    only, _, _ = search_layer(q, k, SearchConfig(seq_len=q.shape[2], budget=0.3, kinds=("stream_llm",)))
    assert {p.name for p in only} == {"stream_llm"}, only
    from accel.search.search import SearchResult
    info = SearchResult(layers=[pats], density=[[0.3] * 3], config=cfg).patterns_info()
    assert info["kinds"] == ["vertical_and_slash", "stream_llm"]
    for bad in (("dense",), ("poetry",), ()):
        with pytest.raises(SearchError, match="--kinds"):
            SearchConfig(seq_len=1024, kinds=bad).check()


def test_target_recall_takes_the_cheapest_budget_that_reaches_it():
    q, k = _synthetic_heads()
    cfg = SearchConfig(seq_len=q.shape[2], target_recall=0.97)
    pats, dens, _ = search_layer(q, k, cfg)
    assert all(p.score >= 0.97 for p in pats), pats
    assert dens[0] > dens[2]           # the A-shape head needs a wider window than the minimum
    # the chosen rung is the cheapest: one rung cheaper, the same head's best recall is below the target
    n, d = q.shape[2], q.shape[3]
    slack = cost_tolerance(n, d) / dense_cost(n, d)
    rungs = sorted(cfg.ladder)
    for h, x in enumerate(dens):
        r = next(i for i, b in enumerate(rungs) if x <= b + slack)
        if r > 0:
            cheaper, _, _ = search_layer(q, k, SearchConfig(seq_len=n, budget=rungs[r - 1]))
            assert cheaper[h].score < 0.97, (h, rungs[r - 1], cheaper[h])
    q_rand, k_rand = torch.randn(1, 2, 512, 64) * 0.01, torch.randn(1, 2, 512, 64)  # uniform attention
    pats, dens, _ = search_layer(q_rand, k_rand, SearchConfig(seq_len=512, target_recall=0.99))
    assert [p.name for p in pats] == ["dense", "dense"] and dens == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# length scaling
# ---------------------------------------------------------------------------------------------
def test_scale_pattern_rules():
    vs = HeadPattern("vertical_and_slash", 300, 1000, 0.97)
    assert scale_pattern(vs, 4096, 32768).to_list() == ["vertical_and_slash", 2400, 8000, 0.97]
    assert scale_pattern(vs, 4096, 32768, rule="absolute").to_list() == vs.to_list()
    assert scale_pattern(vs, 32768, 1024).to_list()[1:3] == [30, 100]        # floors: sinks + local band
    a = scale_pattern(HeadPattern("stream_llm", 128, 512), 4096, 16384)
    assert (a.size_1, a.size_2) == (128, 2048)                                   # sink stays absolute
    assert scale_pattern(HeadPattern("block_sparse", 6), 4096, 8192).size_1 == 12
    assert scale_pattern(HeadPattern("block_sparse", 6), 4096, 256).size_1 == 2
    assert scale_pattern(HeadPattern("dense"), 4096, 99).name == "dense"


# ---------------------------------------------------------------------------------------------
# model-level: errors, merge into a pack, CLI
# ---------------------------------------------------------------------------------------------
def test_unsupported_architecture_is_a_model_error():
    from accel.runtime.errors import ModelError

    class NoAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 2, "num_attention_heads": 2,
                                         "_attn_implementation": "eager"})()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids=None, **kw):
            return None

    with pytest.raises(ModelError, match="AttentionInterface"):
        run_search(NoAttention(), torch.zeros(1, 256, dtype=torch.long), SearchConfig(seq_len=256, block=64))


def test_out_of_memory_becomes_a_search_error():
    with pytest.raises(SearchError, match="lower --seq-len"):
        with _oom_as_error("searching"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")


def _search(tiny_model_dir, out, *extra):
    return runner.invoke(app, ["search-patterns", "--model", str(tiny_model_dir), "--output", str(out),
                               "--seq-len", "256", "--block", "32", "--budget", "0.3", *map(str, extra)])


def test_cli_writes_a_pack_and_merges_into_one_keeping_heads(tiny_model_dir, tmp_path):
    from accel.heads import MedusaConfig, MedusaHeads
    from accel.runtime.models import load_model
    from accel.runtime.pack import Pack, load_pack, save_pack

    lm = load_model(str(tiny_model_dir), device="cpu")
    cfg = lm.model.config
    mcfg = MedusaConfig(num_heads=2, num_layers=1, hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size)
    torch.manual_seed(0)
    heads = MedusaHeads(mcfg, lm_head_weight=lm.model.get_output_embeddings().weight)
    for p_ in heads.parameters():
        torch.nn.init.normal_(p_)
    sd = {k: v.clone() for k, v in heads.state_dict().items()}
    medusa = {**mcfg.to_dict(), "tree": [[0], [0, 0]], "rank_acceptance": [[0.5], [0.3]]}
    out = tmp_path / "pack.safetensors"
    save_pack(Pack(base_model="tiny", fingerprint=lm.fingerprint, medusa=medusa, heads=sd,
                   provenance={"commands": {"train_heads": "accel train-heads ..."}, "train_heads": {"x": 1}}), out)

    r = _search(tiny_model_dir, out, "--plot", tmp_path / "p.png")
    assert r.exit_code == 0, r.output
    pack = load_pack(out)
    assert set(pack.heads) == set(sd) and all(torch.equal(pack.heads[k], sd[k]) for k in sd)
    assert pack.medusa == medusa
    assert pack.provenance["train_heads"] == {"x": 1}
    assert pack.provenance["commands"]["train_heads"] == "accel train-heads ..."
    sp = pack.provenance["search_patterns"]
    assert "search-patterns" in sp["command"] and sp["calibration"]["seq_len"] == 256
    assert {"top1_agreement", "kl", "mean_density"} <= set(sp["validation"])
    assert len(pack.patterns) == cfg.num_hidden_layers and all(len(l) == cfg.num_attention_heads for l in pack.patterns)
    assert pack.patterns_info["seq_len"] == 256 and pack.patterns_info["scaling"] == "proportional"
    assert all(0.0 < v[3] <= 1.0 for layer in pack.patterns for v in layer.values())
    assert (tmp_path / "p.png").stat().st_size > 1000
    # MInference export of the result
    r = runner.invoke(app, ["pack", "export", str(out), "--output", str(tmp_path / "mi.json")])
    assert r.exit_code == 0, r.output


def test_cli_calibration_file_too_short_then_pad(tiny_model_dir, tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("a short text. " * 5)
    _one_line_error(_search(tiny_model_dir, tmp_path / "o.safetensors", "--calibration", f, "--no-validate"),
                    "fewer than --seq-len 256")
    r = _search(tiny_model_dir, tmp_path / "o.safetensors", "--calibration", f, "--pad", "--no-validate")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("extra,needle", [
    (["--seq-len", "1024"], "above"),                     # the tiny model's context is 512
    (["--budget", "1.5"], "--budget"),
    (["--budget", "lots"], "--budget"),
    (["--target-recall", "1.2"], "--target-recall"),
    (["--retrieval-weight", "1.5"], "--retrieval-weight"),
    (["--kind", "poetry"], "--kind"),
    (["--kinds", "vertical_and_slash,poetry"], "--kinds"),
    (["--kinds", "dense"], "--kinds"),
    (["--calibration", "no-such-file.txt"], "not found"),
    (["--model", "no-such-model"], "unknown model"),
])
def test_cli_bad_input_is_one_line(tiny_model_dir, tmp_path, extra, needle):
    _one_line_error(_search(tiny_model_dir, tmp_path / "o.safetensors", *extra), needle)


def test_cli_refuses_a_pack_for_another_model_or_not_a_pack(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a pack")
    _one_line_error(_search(tiny_model_dir, bad), "not a readable safetensors pack")
    from accel.runtime.pack import Pack, save_pack

    other = tmp_path / "other.safetensors"
    save_pack(Pack(base_model="other", fingerprint="0123456789abcdef"), other)
    _one_line_error(_search(tiny_model_dir, other), "choose another --output")
