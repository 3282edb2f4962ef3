"""No compilation per prompt length: every Triton launch of the sparse prefill path has the same
specialisation key (hence one binary) at N = 300, 517, 700 and 1024.

The CPU interpreter compiles nothing, so the test asks Triton's own binder for the key each launch
would have on a GPU (signature types, "divisible by 16" / "== 1" flags, constexprs); on a GPU the
inputs are CUDA tensors, the same question.  N = 1024 is the case that used to differ (N and M = N/64
divisible by 16).  The GPU self-test counts real binaries (`scripts/gpu_sparse_speed.py`, "compiles"
column)."""
import pytest
import torch

triton = pytest.importorskip("triton")
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

try:
    from triton.backends.compiler import BaseBackend  # noqa: E402
except Exception:  # pragma: no cover - other Triton layouts
    BaseBackend = None

from accel.kernels import HeadPattern, build_index  # noqa: E402
from accel.kernels import triton_sparse as ts  # noqa: E402

from .conftest import TRITON_DEVICE as DEV  # noqa: E402

LENGTHS = (300, 517, 700, 1024)
MIX = [HeadPattern("vertical_and_slash", 40, 100), HeadPattern("stream_llm", 64, 128),
       HeadPattern("block_sparse", 3), HeadPattern("vertical_and_slash", 10, 200)] * 2


def spec_key(kernel, args, kwargs, honour_do_not_specialize=True):
    """Triton's specialisation key of `kernel[grid](*args, **kwargs)` (what selects the binary)."""
    if BaseBackend is None:
        pytest.skip("this Triton has no BaseBackend to compute specialisation keys")
    fn = getattr(kernel, "fn", kernel)
    dns = getattr(kernel, "do_not_specialize", None)
    if dns is None:
        dns = getattr(kernel, "kwargs", {}).get("do_not_specialize")
    jf = JITFunction(fn, do_not_specialize=list(dns or []) if honour_do_not_specialize else [])
    binder = create_function_from_signature(jf.signature, jf.params, BaseBackend)
    launch = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
    _, spec, _ = binder(*args, **launch)
    return tuple(map(tuple, spec)) + (kwargs.get("num_warps"), kwargs.get("num_stages"))


def _attn_keys(honour=True, d=64, hq=8, hkv=2):
    keys = {}
    for n in LENGTHS:
        g = torch.Generator().manual_seed(n)
        q = torch.randn(1, hq, n, d, generator=g).to(DEV)
        k = torch.randn(1, hkv, n, d, generator=g).to(DEV)
        idx = build_index(q, k, MIX[:hq], 64, 64)
        _, args, kw = ts._launch_args(q, k, k, torch.empty_like(q), idx, d ** -0.5)
        keys[n] = spec_key(ts._sparse_attn_fwd, args, kw, honour)
    return keys


def test_attention_kernel_one_binary_for_all_lengths():
    keys = _attn_keys()
    assert len(set(keys.values())) == 1, {n: k for n, k in keys.items()}


def test_key_detector_sees_length_specialisation():
    """Without do_not_specialize the same launches need several binaries: the detector works."""
    keys = _attn_keys(honour=False)
    assert len(set(keys.values())) > 1


class _Recorder:
    """Stands in for a @triton.jit kernel: records each launch's arguments instead of running it
    (the key needs only types, divisibility and constexprs, not results)."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.kernel, args, kwargs))


def _keys_per_kernel(monkeypatch, modules_names, run):
    """{kernel name: set of specialisation keys} of the launches `run(n)` makes at every length."""
    log = []
    for mod, name in modules_names:
        kernel = getattr(mod, name)
        monkeypatch.setattr(mod, name, _Recorder(getattr(kernel, "kernel", kernel), log))
    keys = {name: set() for _, name in modules_names}
    for n in LENGTHS:
        log.clear()
        run(n)
        assert {kernel.fn.__name__ for kernel, _, _ in log} == set(keys), [k.fn.__name__ for k, _, _ in log]
        for kernel, args, kwargs in log:
            keys[kernel.fn.__name__].add(spec_key(kernel, args, kwargs))
    return {name: len(v) for name, v in keys.items()}


def _qk(n, hq=14, d=64):
    g = torch.Generator().manual_seed(n)
    return torch.randn(1, hq, n, d, generator=g).to(DEV), torch.randn(1, 2, n, d, generator=g).to(DEV)


def test_fused_estimation_one_binary_per_kernel_for_all_lengths(monkeypatch):
    """build_index's GPU path: scores, selection + slash tiles, block lists (all-vertical-slash layer),
    and the fill launch of a mixed layer's other rows."""
    from accel.kernels import index_fill, vs_fused

    names = [(vs_fused, n) for n in ("_vs_stats", "_vs_sums", "_vs_lists", "_block_lists")]
    vs = [HeadPattern("vertical_and_slash", 64, 200)] * 14
    got = _keys_per_kernel(monkeypatch, names, lambda n: build_index(*_qk(n), vs, 64, 64, fused=True))
    assert got == {name: 1 for _, name in names}
    names.append((index_fill, "_fill_rows"))
    mix = (MIX * 2)[:14]
    got = _keys_per_kernel(monkeypatch, names, lambda n: build_index(*_qk(n), mix, 64, 64, fused=True))
    assert got == {name: 1 for _, name in names}


def test_public_fused_kernels_one_binary_for_all_lengths(monkeypatch):
    """The search's path: `vertical_slash_sums` and `vertical_slash_index_fused` on given lists."""
    from accel.kernels import vs_fused

    names = [(vs_fused, n) for n in ("_vs_stats", "_vs_sums", "_diag_combine", "_slash_tiles", "_block_lists")]

    def run(n):
        vs_fused.vertical_slash_sums(*_qk(n))
        g = torch.Generator().manual_seed(n)
        vert = torch.randint(0, n, (1, 14, 64), generator=g).to(DEV)
        sl = torch.randint(0, n, (1, 14, 200), generator=g).to(DEV)
        vs_fused.vertical_slash_index_fused(vert, sl, n, 64, 64)
    got = _keys_per_kernel(monkeypatch, names, run)
    assert got == {name: 1 for _, name in names}
