"""``accel generate``: read prompts, load model (+ pack), generate, write text or JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import err, out, user_errors, command_line


def generate(
    prompt_file: str = typer.Option(..., "--prompt-file", "-p", help=".txt (one prompt), .jsonl (one per line: {id, prompt|messages}), or - for stdin."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="smollm2-135m, qwen2.5-coder-0.5b (32K), a HF model folder, a .gguf file, or a cached hub id."),
    pack: Optional[str] = typer.Option(None, "--pack", help="Acceleration pack (.safetensors). Default model: the shipped pack."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (Medusa gives plain greedy's tokens)."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(0, "--seed"),
    medusa: Optional[bool] = typer.Option(None, "--medusa/--no-medusa", help="Medusa tree decoding with the pack's heads (default: on with CUDA; on a CPU the 64-node verify step is compute-bound and plain decoding is faster)."),
    dense_prefill: bool = typer.Option(False, "--dense-prefill", help="Dense attention for prefill even if the pack has patterns."),
    acceptance: str = typer.Option("typical", "--acceptance", help="Sampling with Medusa: typical (fast, Medusa's) or speculative (distribution-exact)."),
    tree: Optional[str] = typer.Option(None, "--tree", help="JSON file with a Medusa tree (list of paths of top-k indices)."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Apply the chat template to plain prompts (default: when the model has one)."),
    truncate: Optional[str] = typer.Option(None, "--truncate", help="'left' drops the oldest prompt tokens that do not fit the context."),
    sparse_min_len: Optional[int] = typer.Option(None, "--sparse-min-len", min=1, help="Prompt length from which sparse prefill is used (default: measured threshold on CUDA; off on CPU)."),
    compile: Optional[str] = typer.Option(None, "--compile", help="Decode steps on CUDA: exact (default: batch-invariant Triton kernels in a CUDA graph; greedy output is the same with or without Medusa and in any batch, and it is the fastest step measured), graph (cuBLAS/SDPA in a CUDA graph), inductor (torch.compile'd layers), eager."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write one JSON line per prompt here instead of text on stdout."),
    stats: bool = typer.Option(False, "--stats", help="Print prefill time, tokens/s, accepted tokens/step, attention density."),
    force: bool = typer.Option(False, "--force", help="Use a pack whose fingerprint does not match the model."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a model folder's own Python code (off unless asked for)."),
):
    """Generate text for every prompt in a file: sparse prefill + Medusa decoding when a pack allows."""
    with user_errors():
        from ..runtime.errors import AccelError
        from ..runtime.generate import GenerationConfig, Generator
        from ..runtime.prompts import read_prompt_file

        if temperature < 0:
            raise AccelError(f"--temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise AccelError(f"--top-p must be in (0, 1], got {top_p}")
        if truncate not in (None, "left"):
            raise AccelError(f"--truncate takes only 'left', got {truncate!r}")
        if acceptance not in ("typical", "speculative"):
            raise AccelError(f"--acceptance must be typical or speculative, got {acceptance!r}")
        if compile not in (None, "exact", "graph", "inductor", "eager"):
            raise AccelError(f"--compile must be exact, graph, inductor or eager, got {compile!r}")
        if output is not None and output.is_dir():
            raise AccelError(f"--output {output} is a folder; give a file name like out.jsonl")
        prompts = read_prompt_file(prompt_file)  # validate before the slow model load
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               seed=seed, medusa=medusa, dense_prefill=dense_prefill,
                               acceptance=acceptance, tree_file=tree, chat=chat, truncate=truncate,
                               sparse_min_len=sparse_min_len, compile=compile)
        gen = Generator.load(model, pack=pack, device=device, dtype=dtype, force=force, config=cfg,
                             trust_remote_code=trust_remote_code)
        completions = gen.run(prompts)
        if output is not None:
            rows = [json.dumps(c.to_json(), ensure_ascii=False) for c in completions]
            _atomic_write(output, "\n".join(rows) + "\n")
            err.print(f"wrote {len(rows)} completions to {output}")
        else:
            for c in completions:
                if len(completions) > 1:
                    out.print(f"### {c.id}", markup=False)
                out.print(c.text, markup=False)
        if stats:
            gen.print_stats(completions, err)


def _atomic_write(path: Path, text: str) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
