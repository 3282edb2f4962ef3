"""The sparse-pattern registry (kernels/patterns.py): names defined once, MInference JSON round-trip,
size bounds as one-line errors naming the field, length scaling and search candidates as before the
registry, and every registered pattern's index equal to a reference mask written from its definition."""

import json
import math

import pytest
import torch

from accel.kernels import PATTERNS, HeadPattern, PatternError, build_index, get_pattern, kept_mask
from accel.kernels.patterns import Pattern, from_minference, register, to_minference, validate_entry
from accel.kernels.scaling import scale_pattern
from accel.search import candidates_for_budget

# a MInference best-pattern config as its tools write it (json, one dict per layer)
MINFERENCE_JSON = json.dumps([
    {"0": ["vertical_and_slash", 1000, 6096, 0.3360], "1": ["stream_llm", 100, 800, 0.9],
     "2": ["block_sparse", 32, 0, 0.5], "3": ["vertical_and_slash", 3500, 100, 0.81]},
    {"0": ["dense", 0, 0, 1.0], "1": ["vertical_and_slash", 30, 800, 0.7],
     "2": ["stream_llm", 64, 2048, 0.95], "3": ["block_sparse", 1, 0, 0.2]},
])


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------
def test_names_and_aliases_are_defined_once():
    assert tuple(PATTERNS) == ("vertical_and_slash", "stream_llm", "block_sparse", "dense")
    seen = set()
    for name, kind in PATTERNS.items():
        assert kind.name == name and get_pattern(name) is kind
        for key in (name, *kind.aliases):
            assert key not in seen
            seen.add(key)
            assert get_pattern(key.upper()) is kind           # case-insensitive, aliases resolve
    assert HeadPattern("A_Shape", 64, 128).kind is PATTERNS["stream_llm"]
    with pytest.raises(ValueError, match="registered twice"):
        @register
        class Again(Pattern):
            name, aliases = "again", ("vs",)


def test_minference_json_round_trips():
    layers = from_minference(json.loads(MINFERENCE_JSON))
    assert [[p.name for p in layer] for layer in layers][1] == ["dense", "vertical_and_slash", "stream_llm",
                                                               "block_sparse"]
    assert json.dumps(to_minference(layers)) == MINFERENCE_JSON
    # aliases on input are written back under MInference's names
    assert to_minference(from_minference([{"0": ["a_shape", 64, 512, 0.5]}])) == \
        [{"0": ["stream_llm", 64, 512, 0.5]}]


@pytest.mark.parametrize("entry,needle", [
    (["nope", 1, 1, 0.0], "unknown pattern"),
    (["vertical_and_slash", 10, 0, 0.0], "s (size_2) >= 1"),
    (["vertical_and_slash", 1.5, 3, 0.0], "size_1 (v) must be an integer"),
    (["vertical_and_slash", "many", 3, 0.0], "size_1 (v) must be an integer"),
    (["vertical_and_slash", 10, 2 ** 31, 0.0], "size_2 (s) must be <="),
    (["stream_llm", -1, 10, 0.0], "size_1 (sink) must be >= 0"),
    (["stream_llm", 64, 0, 0.0], "local window (size_2) >= 1"),
    (["block_sparse", 0, 0, 0.0], "top-k (size_1) >= 1"),
    (["block_sparse", 4, 0, "high"], "score must be a number"),
    (["stream_llm", 64], "expected [name, size_1, size_2, score]"),
    ("stream_llm", "expected [name, size_1, size_2, score]"),
])
def test_bad_sizes_are_one_line_errors_naming_the_field(entry, needle):
    with pytest.raises(PatternError) as e:
        validate_entry(entry)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


def test_pack_refuses_out_of_bounds_sizes_in_one_line(tmp_path):
    from accel.runtime.errors import PackError
    from accel.runtime.pack import Pack, load_pack, save_pack

    bad = Pack("m", "fp", patterns=[{"0": ["stream_llm", 64, 512, 0.9], "1": ["stream_llm", 64, 0, 0.9]}])
    with pytest.raises(PackError) as e:
        save_pack(bad, tmp_path / "p.safetensors")
    assert "layer 0 head 1" in str(e.value) and "local window" in str(e.value) and "\n" not in str(e.value)
    good = Pack("m", "fp", patterns=json.loads(MINFERENCE_JSON))
    assert load_pack(save_pack(good, tmp_path / "q.safetensors")).patterns == json.loads(MINFERENCE_JSON)


# ---------------------------------------------------------------------------------------------
# behaviour pinned from before the registry
# ---------------------------------------------------------------------------------------------
# (pattern, [(searched, actual) -> sizes]) under the proportional rule, as kernels/scaling.py gave them
_SCALED = {
    ("vertical_and_slash", 1000, 6096): [(8000, 48768), (125, 762), (122, 744), (1000, 6096)],
    ("vertical_and_slash", 20, 50): [(160, 400), (20, 50), (20, 50), (20, 50)],
    ("stream_llm", 64, 4096): [(64, 32768), (64, 512), (64, 500), (64, 4096)],
    ("stream_llm", 1024, 40): [(1024, 320), (1024, 40), (1024, 40), (1024, 40)],
    ("block_sparse", 12, 0): [(96, 0), (2, 0), (2, 0), (12, 0)],
    ("block_sparse", 1, 0): [(8, 0), (1, 0), (1, 0), (1, 0)],
    ("dense", 0, 0): [(0, 0), (0, 0), (0, 0), (0, 0)],
}
_LENGTHS = [(4096, 32768), (32768, 4096), (8192, 1000), (1000, 1000)]


@pytest.mark.parametrize("pat", list(_SCALED))
def test_scaling_matches_the_rule_before_the_registry(pat):
    p = HeadPattern(*pat, 0.5)
    for (searched, actual), want in zip(_LENGTHS, _SCALED[pat]):
        got = p.kind.scale(p, searched, actual, "proportional")
        assert (got.name, got.size_1, got.size_2, got.score) == (p.name, *want, 0.5)
        assert scale_pattern(p, searched, actual) == got
        assert p.kind.scale(p, searched, actual, "absolute") == p
    with pytest.raises(PatternError, match="scaling rule"):
        p.kind.scale(p, 1, 2, "quadratic")


def test_search_candidates_match_before_the_registry():
    got = sorted(p.to_list() for p in candidates_for_budget(2048, 64, 0.3))
    assert got == [["block_sparse", 5, 0, 0.0], ["stream_llm", 64, 192, 0.0], ["stream_llm", 128, 128, 0.0],
                   ["stream_llm", 256, 1, 0.0], ["vertical_and_slash", 64, 193, 0.0],
                   ["vertical_and_slash", 128, 129, 0.0], ["vertical_and_slash", 192, 65, 0.0],
                   ["vertical_and_slash", 256, 1, 0.0]]
    got = sorted(p.to_list() for p in candidates_for_budget(4096, 128, 0.1))
    assert got == [["block_sparse", 3, 0, 0.0], ["stream_llm", 64, 64, 0.0], ["stream_llm", 128, 1, 0.0],
                   ["vertical_and_slash", 64, 65, 0.0], ["vertical_and_slash", 128, 1, 0.0]]
    assert candidates_for_budget(2048, 64, 1.0) == [HeadPattern("dense")]


def test_each_kind_candidates_fit_the_budget():
    n, d, block, budget = 3000, 64, 64, 0.15
    dense = PATTERNS["dense"].cost(HeadPattern("dense"), n, d, block)
    for kind in PATTERNS.values():
        for p in kind.search_candidates(budget, n, d, block):
            assert p.kind is kind
            assert kind.cost(p, n, d, block) <= budget * dense or p.size_1 <= 1 or p.size_2 <= 1, p


# ---------------------------------------------------------------------------------------------
# every registered pattern: kept keys == a reference mask from the pattern's definition
# ---------------------------------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def _round_to_blocks(textbook, bm, bn):
    """(N, N) textbook keys -> the aligned key blocks of each query block that hold one of its keys."""
    N = textbook.shape[0]
    out = torch.zeros_like(textbook)
    for m in range(_cdiv(N, bm)):
        r0, r1 = m * bm, min(N, (m + 1) * bm)
        any_key = textbook[r0:r1].any(0)
        for kb in range(_cdiv(N, bn)):
            if any_key[kb * bn:(kb + 1) * bn].any():
                out[r0:r1, kb * bn:(kb + 1) * bn] = True
    return out


def _ref_dense(q, k, h, p, bm, bn):
    return torch.ones(q.shape[2], q.shape[2], dtype=torch.bool)


def _ref_stream_llm(q, k, h, p, bm, bn):
    N = q.shape[2]
    r, j = torch.arange(N)[:, None], torch.arange(N)[None, :]
    textbook = (j < p.size_1) | ((j > r - p.size_2) & (j <= r))
    return _round_to_blocks(textbook, bm, bn)


def _ref_block_sparse(q, k, h, p, bm, bn):
    """Mean-pooled q (bm rows) · mean-pooled k (bn keys); the diagonal blocks always, then top-k."""
    N = q.shape[2]
    G = q.shape[1] // k.shape[1]
    qh, kh = q[0, h].double(), k[0, h // G].double()
    out = torch.zeros(N, N, dtype=torch.bool)
    for m in range(_cdiv(N, bm)):
        r0, r1 = m * bm, min(N, (m + 1) * bm)
        allowed = [kb for kb in range(_cdiv(N, bn)) if kb * bn <= r1 - 1]
        forced = [kb for kb in allowed if kb * bn + bn - 1 >= r0]
        score = {kb: float(qh[r0:r1].mean(0) @ kh[kb * bn:(kb + 1) * bn].mean(0)) for kb in allowed}
        rest = sorted((kb for kb in allowed if kb not in forced), key=lambda kb: -score[kb])
        count = max(min(p.size_1, len(allowed)), len(forced))
        for kb in forced + rest[:count - len(forced)]:
            out[r0:r1, kb * bn:(kb + 1) * bn] = True
    return out


def _ref_vertical_and_slash(q, k, h, p, bm, bn, last_q=64):
    """MInference's estimation in float64, then the documented rounding: each chosen diagonal d covers
    keys [r0-d, r0-d+bm) of query block [r0, r1); runs are merged while one starts inside an earlier
    one's bn-tiled extent, and kept as whole bn-wide tiles; chosen columns are kept as they are."""
    N, D = q.shape[2], q.shape[3]
    G = q.shape[1] // k.shape[1]
    qh, kh = q[0, h].double(), k[0, h // G].double()
    lq = min(last_q, N)
    rows = torch.arange(N - lq, N)
    s = (qh[N - lq:] @ kh.T) * D ** -0.5
    s[torch.arange(N)[None, :] > rows[:, None]] = float("-inf")
    prob = torch.softmax(s, -1)                                                   # (lq, N)
    col = prob.sum(0)
    diag = torch.zeros(N, dtype=torch.float64)
    for i, r in enumerate(rows.tolist()):                                       # diag[d]: keys j = r - d
        diag.index_add_(0, r - torch.arange(r + 1), prob[i, :r + 1])
    big = 2 * lq + 1000
    col[:30] = big - torch.arange(min(30, N), dtype=torch.float64)               # first keys always
    diag[:100] = big - torch.arange(min(100, N), dtype=torch.float64)            # nearest diagonals always
    cols = torch.topk(col, min(p.size_1, N)).indices.tolist()
    diags = sorted(torch.topk(diag, min(p.size_2, N)).indices.tolist(), reverse=True)
    # relative to r0; a pass merges every run that starts inside the tiled extent of an earlier run,
    # passes repeat until none does (tiled extents then disjoint)
    runs = [[-d, -d + bm] for d in diags]
    while True:
        merged, reach = [], -math.inf
        for a, e in runs:
            if merged and a < reach:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([a, e])
            reach = max(reach, a + _cdiv(e - a, bn) * bn)
        if len(merged) == len(runs):
            break
        runs = merged
    out = torch.zeros(N, N, dtype=torch.bool)
    for m in range(_cdiv(N, bm)):
        r0, r1 = m * bm, min(N, (m + 1) * bm)
        for a, e in runs:
            lo, hi = r0 + a, r0 + a + _cdiv(e - a, bn) * bn
            out[r0:r1, max(lo, 0):max(hi, 0)] = True
    out[:, cols] = True
    return out


REFERENCES = {"dense": _ref_dense, "stream_llm": _ref_stream_llm, "block_sparse": _ref_block_sparse,
              "vertical_and_slash": _ref_vertical_and_slash}
# per kind, settings that exercise its sizes (small and large against N)
SETTINGS = {"dense": [(0, 0)], "stream_llm": [(8, 40), (40, 1), (0, 300)], "block_sparse": [(1, 0), (3, 0), (99, 0)],
            "vertical_and_slash": [(12, 24), (0, 150), (200, 3), (40, 1), (20, 140)]}  # s > 100: scattered


@pytest.mark.parametrize("N,bm,bn", [(200, 32, 16), (150, 16, 32), (129, 64, 64), (520, 16, 32)])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_every_registered_pattern_keeps_its_reference_keys(name, N, bm, bn):
    assert name in REFERENCES, f"pattern {name!r} is registered without a reference mask in this test"
    g = torch.Generator().manual_seed(N + bm)
    Hq, Hkv = 4, 2
    q, k = torch.randn(1, Hq, N, 16, generator=g), torch.randn(1, Hkv, N, 16, generator=g)
    causal = torch.tril(torch.ones(N, N, dtype=torch.bool))
    for s1, s2 in SETTINGS[name]:
        pats = [HeadPattern(name, s1, s2)] * Hq
        got = kept_mask(build_index(q, k, pats, bm, bn))[0]                      # (Hq, N, N)
        for h in range(Hq):
            want = REFERENCES[name](q, k, h, pats[h], bm, bn) & causal
            assert torch.equal(got[h], want), (name, s1, s2, h, int((got[h] ^ want).sum()))


def test_mixed_layer_each_head_keeps_its_reference_keys():
    N, bm, bn = 190, 32, 32
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, 8, N, 16, generator=g), torch.randn(1, 2, N, 16, generator=g)
    pats = [HeadPattern("vertical_and_slash", 10, 30), HeadPattern("stream_llm", 16, 50), HeadPattern("block_sparse", 2),
            HeadPattern("dense"), HeadPattern("vertical_and_slash", 50, 5), HeadPattern("block_sparse", 4),
            HeadPattern("stream_llm", 0, 64), HeadPattern("vertical_and_slash", 0, 120)]
    got = kept_mask(build_index(q, k, pats, bm, bn))[0]
    causal = torch.tril(torch.ones(N, N, dtype=torch.bool))
    for h, p in enumerate(pats):
        assert torch.equal(got[h], REFERENCES[p.name](q, k, h, p, bm, bn) & causal), (h, p)
    assert [p.is_dense for p in pats].count(True) == 1


def test_cli_pack_with_a_bad_size_is_one_line(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from accel.cli import app
    from accel.runtime.pack import Pack, save_pack

    path = save_pack(Pack("m", "fp", patterns=json.loads(MINFERENCE_JSON)), tmp_path / "p.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["accel.patterns"] = json.dumps([{"0": ["block_sparse", 0, 0, 0.5]}])         # top-k 0
    save_file(tensors, str(path), metadata=meta)
    r = CliRunner().invoke(app, ["pack", "inspect", str(path)])
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "layer 0 head 0" in lines[0] and "top-k (size_1) >= 1" in lines[0], lines[0]


def test_predicted_work_is_the_mean_cost_share():
    from accel.kernels.patterns import dense_cost, pattern_cost, predicted_work

    layers = from_minference(json.loads(MINFERENCE_JSON))
    n, d = 16384, 64
    want = sum(pattern_cost(p, n, d) / dense_cost(n, d) for layer in layers for p in layer) / 8
    assert predicted_work(layers, n, d) == pytest.approx(want, rel=1e-12)
    assert predicted_work([[HeadPattern("dense")] * 2], n, d) == 1.0


def test_every_kind_prices_patterns_as_the_sum_of_block_tiles_over_query_blocks():
    """`Pattern.costs` prices many patterns at once with each kind's tensor form of `block_tiles` (the
    runtime prices every head of every layer when it plans a prompt); it equals the per-block Python sum of
    `block_tiles` for every kind and mode, and `layer_work_shares` equals the per-layer mean cost share."""
    import random

    from accel.kernels.patterns import PATTERNS, HeadPattern, dense_cost, layer_work_shares, pattern_cost

    def loop_cost(p, n, d, block, mode):
        m_blocks = -(-n // block)
        t = sum(p.kind.block_tiles(p, m * block, min((m + 1) * block, n), n, block, mode) for m in range(m_blocks))
        return 4 * block * block * d * t

    rng = random.Random(0)
    sizes = {"vertical_and_slash": lambda: (rng.randint(0, 12000), rng.randint(0, 12000)),
             "stream_llm": lambda: (rng.randint(0, 3000), rng.randint(1, 12000)),
             "block_sparse": lambda: (rng.randint(1, 300), 0), "dense": lambda: (0, 0)}
    for _ in range(60):
        n, block = rng.randint(1, 9000), rng.choice([16, 64, 128])
        for name, draw in sizes.items():
            pats = [HeadPattern(name, *draw()) for _ in range(4)]
            for mode in ("expected", "upper", "plain"):
                got = PATTERNS[name].costs([(p.size_1, p.size_2) for p in pats], n, 64, block, mode).tolist()
                assert got == [loop_cost(p, n, 64, block, mode) for p in pats], (name, n, block, mode)
    layers = [[HeadPattern(name, *draw()) for name, draw in sizes.items()] for _ in range(3)]
    n = 5000
    want = [sum(pattern_cost(p, n, 64) for p in layer) / dense_cost(n, 64) / len(layer) for layer in layers]
    assert layer_work_shares(layers, n, 64) == pytest.approx(want, rel=1e-12)
