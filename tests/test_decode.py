"""Plain decode: == transformers greedy, batching == per-prompt, seeded sampling, argument checks."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.runtime.decode import generate_plain
from accel.runtime.model import CompactLM
from accel.runtime.sampling import logits_to_probs, sample

PROMPTS = [[1, 5, 7, 9, 11], [3, 4], [8, 6, 8, 6, 8, 6, 8, 2, 40]]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.3, tie_word_embeddings=True, eos_token_id=None, bos_token_id=None,
                      pad_token_id=None)
    hf = LlamaForCausalLM(cfg).eval()
    return hf, CompactLM.from_hf(hf)


def test_greedy_equals_transformers_generate(models):
    hf, m = models
    for p in PROMPTS:
        ref = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)[0, len(p):].tolist()
        got = generate_plain(m, [p], 24)[0]
        assert got.tokens == ref
        assert got.num_new == 24 and not got.stopped_on_eos


def test_batch_of_different_lengths_equals_single_runs(models):
    _, m = models
    batch = generate_plain(m, PROMPTS, 20)
    for p, r in zip(PROMPTS, batch):
        assert r.tokens == generate_plain(m, [p], 20)[0].tokens


def test_per_row_eos_stop(models):
    _, m = models
    full = [r.tokens for r in generate_plain(m, PROMPTS, 20)]
    eos = full[0][5]  # row 0 stops at its 6th token; other rows stop wherever eos appears, if at all
    res = generate_plain(m, PROMPTS, 20, eos_ids=(eos,), check_every=4)
    for f, r in zip(full, res):
        cut = f.index(eos) + 1 if eos in f else len(f)
        assert r.tokens == f[:cut]
        assert r.stopped_on_eos == (eos in f)


def test_sampling_reproducible_with_seed(models):
    _, m = models
    a = generate_plain(m, PROMPTS, 16, temperature=1.0, top_p=0.9, seed=7)
    b = generate_plain(m, PROMPTS, 16, temperature=1.0, top_p=0.9, seed=7)
    c = generate_plain(m, PROMPTS, 16, temperature=1.0, top_p=0.9, seed=8)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in a] != [r.tokens for r in c]
    # a nucleus this small keeps only the top token: sampling becomes greedy
    assert [r.tokens for r in generate_plain(m, PROMPTS, 16, temperature=1.0, top_p=1e-6)] == \
        [r.tokens for r in generate_plain(m, PROMPTS, 16)]


def test_top_p_filter_and_argument_checks(models):
    _, m = models
    probs = logits_to_probs(torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])), 1.0, top_p=0.8)
    assert torch.allclose(probs, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.allclose(logits_to_probs(torch.log(torch.tensor([0.5, 0.3, 0.2])), 1.0, 0.5),
                          torch.tensor([1.0, 0.0, 0.0]))
    counts = torch.bincount(sample(torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3), 1.0,
                                   generator=torch.Generator().manual_seed(0)), minlength=3) / 20000
    assert torch.allclose(counts, torch.tensor([0.7, 0.2, 0.1]), atol=0.015)
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1.0)):
        with pytest.raises(ValueError, match="must be"):
            generate_plain(m, PROMPTS, 4, **bad)
    with pytest.raises(ValueError, match="non-empty"):
        generate_plain(m, [[]], 4)
    with pytest.raises(ValueError, match="CUDA"):
        generate_plain(m, PROMPTS, 4, compile="graph")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decode_equals_eager(models):
    hf, _ = models
    m = CompactLM.from_hf(hf.to("cuda"))
    eager = generate_plain(m, PROMPTS, 24, compile="eager")
    for mode in ("graph",):
        graph = generate_plain(m, PROMPTS, 24, compile=mode)
        assert [r.tokens for r in graph] == [r.tokens for r in eager], mode
    again = generate_plain(m, PROMPTS[:2] + PROMPTS[:1], 24, compile="graph")  # cached graph, new inputs
    assert [r.tokens for r in again] == [eager[0].tokens, eager[1].tokens, eager[0].tokens]
    hf.to("cpu")
