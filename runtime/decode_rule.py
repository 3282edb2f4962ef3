"""Batched plain vs speculative decoding for a prompt file: a simple measured rule.

A prompt file of n prompts can decode two ways (``Engine.stream``):
- batched plain: all n rows step together; one step costs about what a batch-1 step costs while the
  model is launch/bandwidth bound, so total tokens/s grows with n;
- speculative: prompt after prompt at batch 1, ``accepted tokens/step`` per verify step.

The rule compares the two estimates with a small table of measured throughputs (wall clock, request
start to last token, ``accel bench decode``):

    est. speculative = n * tokens / spec_tok_s                 (batch 1, one prompt after another)
    est. batched     = n * tokens / plain_tok_s(n)             (plain_tok_s: all rows together)

``plain_tok_s(n)`` interpolates linearly between measured batch sizes and stays flat past the largest
one (no extrapolated growth: the estimate for batched decoding is then pessimistic, never optimistic).
``tokens`` is ``max_new_tokens`` (an upper bound for both paths, EOS is not known in advance).

Where the table comes from, in order: the pack's ``accel.provenance.decode_throughput`` (measured for
that model: ``accel bench decode --json`` writes it under ``decode_throughput``), else the defaults
below, measured for SmolLM2-135M on an H200 and labelled as such wherever they are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DecodeThroughput", "DecodeChoice", "DEFAULT_THROUGHPUT", "throughput_for", "choose_decode"]


@dataclass(frozen=True)
class DecodeThroughput:
    """Measured wall-clock tokens/s: ``plain`` maps batch size -> tokens/s of all rows together;
    ``speculative`` is the speculative decoder's at batch 1. ``source`` says where they come from."""

    plain: dict[int, float]
    speculative: float
    source: str
    device_type: str = "cuda"  # the rule is only applied on the kind of device it was measured on

    def plain_at(self, n: int) -> float:
        """Total tokens/s of a plain batch of ``n`` rows (linear between measured sizes, flat past them)."""
        pts = sorted((int(b), float(t)) for b, t in self.plain.items())
        if n <= pts[0][0]:
            # below the smallest measured batch: scale down proportionally (a step costs the same)
            return pts[0][1] * n / pts[0][0]
        for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
            if n <= b1:
                return t0 + (t1 - t0) * (n - b0) / (b1 - b0)
        return pts[-1][1]

    @classmethod
    def from_dict(cls, d, source: str) -> "DecodeThroughput":
        """From ``{"plain_tok_s": {"1": 730, "12": 6389}, "speculative_tok_s": 1158}``; ValueError if unusable."""
        try:
            plain = {int(b): float(t) for b, t in dict(d["plain_tok_s"]).items()}
            spec = float(d["speculative_tok_s"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("decode_throughput needs plain_tok_s {batch: tok/s} and speculative_tok_s") from None
        ok = 0 < len(plain) <= 64 and all(1 <= b <= 1 << 16 and math.isfinite(t) and t > 0 for b, t in plain.items())
        if not ok or not (math.isfinite(spec) and spec > 0):
            raise ValueError("decode_throughput: batch sizes must be >= 1 and tokens/s finite and > 0")
        dev = d.get("device_type", "cuda")
        if dev not in ("cuda", "cpu"):
            raise ValueError(f"decode_throughput: device_type must be cuda or cpu, got {dev!r}")
        return cls(plain, spec, source, dev)

    def to_dict(self) -> dict:
        return {"plain_tok_s": {str(b): t for b, t in sorted(self.plain.items())},
                "speculative_tok_s": self.speculative, "device_type": self.device_type}


# results/decode-smollm2-wall.json (H200, 2026-12-03, session 4, 12 held-out prompts x 256 tokens, wall clock
# from request start): plain exact 701 tok/s at batch 1, 780 / 1446 / 2950 / 4000 at batch 2 / 4 / 8 / 12;
# Medusa (the shipped pack) 1144 tok/s at batch 1.
DEFAULT_THROUGHPUT = DecodeThroughput(
    plain={1: 701.2, 2: 780.0, 4: 1445.6, 8: 2949.8, 12: 3999.9}, speculative=1144.4,
    source="defaults: SmolLM2-135M on an H200, results/decode-smollm2-wall.json")


def throughput_for(pack, device_type: str = "cuda") -> DecodeThroughput | None:
    """The pack's measured table (``provenance.decode_throughput``) if it was measured on this kind of
    device, else ``DEFAULT_THROUGHPUT`` on CUDA, else None (no measurement: on a CPU the verify step is
    compute-bound and plain decoding is the default). A malformed table in a pack is ignored (the
    defaults are used, and say so) rather than failing a run."""
    d = (pack.provenance or {}).get("decode_throughput") if pack is not None else None
    if isinstance(d, dict):
        try:
            t = DecodeThroughput.from_dict(d, f"the pack's measurement ({str(d.get('device', 'this model'))[:60]})")
            if t.device_type == device_type:
                return t
        except ValueError:
            pass
    return DEFAULT_THROUGHPUT if device_type == DEFAULT_THROUGHPUT.device_type else None


@dataclass(frozen=True)
class DecodeChoice:
    """Which path a prompt file ran and why; ``line()`` is what ``--stats`` prints."""

    speculative: bool
    n_prompts: int
    est_batched_s: float | None = None
    est_speculative_s: float | None = None
    source: str = ""
    forced: str | None = None  # why the rule was not asked: "--medusa", "--no-medusa", "no drafter", ...
    drafter: str = "speculative"

    def line(self) -> str:
        path = f"speculative ({self.drafter}) prompt by prompt" if self.speculative else "batched plain"
        n = f"{self.n_prompts} prompt{'s' if self.n_prompts != 1 else ''}"
        if self.est_batched_s is None:
            return f"decode: {path} ({n}: {self.forced})"
        est = (f"est. {self.est_speculative_s:.2g} s vs batched plain {self.est_batched_s:.2g} s" if self.speculative
               else f"est. {self.est_batched_s:.2g} s vs speculative {self.est_speculative_s:.2g} s")
        why = f"forced by {self.forced}; the rule" if self.forced else "rule"
        return f"decode: {path} ({n}: {est}; {why} from {self.source})"


def choose_decode(n_prompts: int, max_new_tokens: int, table: DecodeThroughput, *, force: bool | None = None,
                  drafter: str = "speculative", forced_by: str = "") -> DecodeChoice:
    """Pick the faster path for ``n_prompts`` prompts of up to ``max_new_tokens`` new tokens each.
    ``force``: True/False runs speculative/batched whatever the estimate (``forced_by`` names the flag)."""
    if n_prompts < 1:
        raise ValueError("n_prompts must be >= 1")
    work = n_prompts * max_new_tokens
    batched = work / table.plain_at(n_prompts)
    spec = work / table.speculative
    pick = spec < batched if force is None else bool(force)
    return DecodeChoice(pick, n_prompts, batched, spec, table.source, forced_by if force is not None else None,
                        drafter)
