"""``accel generate``: read prompts, load model (+ pack), generate, write text or JSONL.

Everything that can be checked cheaply is checked before the model loads: option values, the --tree
file, the output path (``runtime.files.check_output``: not an input, not a special file, a writable
folder), the prompt file. ``--output`` is written atomically and as each completion finishes, so a
failure or Ctrl-C partway keeps the finished completions and the error line says how many.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from .common import GENERATE_OOM_HINT, err, out, printable, user_errors

_MAX_TREE_FILE = 256 * 1024


def generate(
    prompt_file: str = typer.Option(..., "--prompt-file", "-p", help=".txt (one prompt), .jsonl (one per line: {id, prompt|messages}), or - for stdin."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="smollm2-135m, qwen2.5-coder-0.5b (32K), a HF model folder, a .gguf file, or a cached hub id."),
    pack: Optional[str] = typer.Option(None, "--pack", help="Acceleration pack (.safetensors). Default model: the shipped pack."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", min=1),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy (Medusa gives plain greedy's tokens)."),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: int = typer.Option(0, "--seed"),
    medusa: Optional[bool] = typer.Option(None, "--medusa/--no-medusa", help="Force speculative decoding with the pack's drafter prompt by prompt (--medusa) or one batched plain decode (--no-medusa). Default: whichever a measured rule estimates faster for the prompt file (few prompts: speculative; many: batched plain; --stats says which and why); on a CPU plain, unless the pack measured otherwise."),
    dense_prefill: bool = typer.Option(False, "--dense-prefill", help="Dense attention for prefill even if the pack has patterns."),
    acceptance: str = typer.Option("typical", "--acceptance", help="Sampling with Medusa: typical (fast, Medusa's) or speculative (distribution-exact)."),
    tree: Optional[str] = typer.Option(None, "--tree", help="JSON file with a Medusa tree (list of paths of top-k indices)."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Apply the chat template to plain prompts (default: when the model has one)."),
    truncate: Optional[str] = typer.Option(None, "--truncate", help="'left' drops the oldest prompt text that does not fit the context (the chat template's header is kept)."),
    sparse_min_len: Optional[int] = typer.Option(None, "--sparse-min-len", min=1, help="Prompt length from which sparse prefill is used (default on CUDA: the threshold the pack recorded for its model, else 32768; off on CPU)."),
    compile: Optional[str] = typer.Option(None, "--compile", help="Decode steps on CUDA: exact (default: batch-invariant Triton kernels in a CUDA graph; greedy output is the same with or without Medusa and in any batch, and it is the fastest step measured), graph (cuBLAS/SDPA in a CUDA graph: the fallback for attention shapes the exact kernels do not support), eager."),
    stream: bool = typer.Option(False, "--stream", help="Print the tokens of a single prompt as they are accepted (plain text on stdout)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write one JSON line per prompt here instead of text on stdout."),
    stats: bool = typer.Option(False, "--stats", help="Print which decode path ran and why (batched plain or speculative, with the rule's estimates), then per prompt: prefill time, wall-clock tokens/s (prefill, capture and decode of the request), decode-only tokens/s, accepted tokens/step, attention density."),
    force: bool = typer.Option(False, "--force", help="Use a pack whose fingerprint does not match the model."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a model folder's own Python code (off unless asked for)."),
):
    """Generate text for every prompt in a file: sparse prefill + Medusa decoding when a pack allows."""
    with user_errors(GENERATE_OOM_HINT):
        from ..runtime.errors import AccelError
        from ..runtime.files import check_output
        from ..runtime.generate import GenerationConfig, Generator
        from ..runtime.prompts import read_prompt_file

        if not (math.isfinite(temperature) and temperature >= 0):
            raise AccelError(f"--temperature must be a finite number >= 0, got {temperature}")
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise AccelError(f"--top-p must be in (0, 1], got {top_p}")
        if not 0 <= seed < 2**63:
            raise AccelError(f"--seed must be an integer in 0..2**63-1, got {seed}")
        if truncate not in (None, "left"):
            raise AccelError(f"--truncate takes only 'left', got {truncate!r}")
        if acceptance not in ("typical", "speculative"):
            raise AccelError(f"--acceptance must be typical or speculative, got {acceptance!r}")
        if compile in ("inductor", "compile"):
            raise AccelError(f"--compile {compile} was removed (never the fastest decode step): use --compile exact "
                             "(the default on CUDA) or graph")
        if compile not in (None, "exact", "graph", "eager"):
            raise AccelError(f"--compile must be exact, graph or eager, got {compile!r}")
        if stream and output is not None:
            raise AccelError("--stream prints to stdout; drop --output (or --stream)")
        if tree is not None:
            if medusa is False:
                raise AccelError("--tree shapes Medusa decoding, which --no-medusa turns off: drop one of them")
            _check_tree_file(tree)
        # everything this command reads: the output may be none of them
        from ..runtime.generate import default_pack_path

        inputs = [prompt_file, pack or default_pack_path(), tree] + ([model] if model and Path(model).exists() else [])
        if output is not None:  # before the slow part: a bad -o fails now, not after generating
            check_output(output, inputs=inputs, what="--output")
        prompts = read_prompt_file(prompt_file, context_length=_context_hint(model))
        if stream and len(prompts) != 1:
            raise AccelError(f"--stream prints one prompt as it is generated; the file has {len(prompts)} prompts")
        if pack is not None:  # a broken pack fails now, not after the slow model load (it is read again there)
            from ..runtime.pack import load_pack

            load_pack(pack)
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               seed=seed, medusa=medusa, dense_prefill=dense_prefill,
                               acceptance=acceptance, tree_file=tree, chat=chat, truncate=truncate,
                               sparse_min_len=sparse_min_len, compile=compile)
        gen = Generator.load(model, pack=pack, device=device, dtype=dtype, force=force, config=cfg,
                             trust_remote_code=trust_remote_code)
        if gen.fallback_reason:
            err.print(f"note: the compact engine cannot run this model ({printable(gen.fallback_reason)}); using "
                      "transformers' generate (no Medusa)")
        if tree is not None and not gen.use_medusa:
            raise AccelError("--tree given, but Medusa decoding is off here (it needs a pack with heads, a "
                             "Llama-family model, and --medusa on a CPU): pass --medusa or drop --tree")
        if stream:
            import sys

            for piece in gen.stream(prompts[0]):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        if output is not None:
            completions = _run_to_file(gen, prompts, output, inputs)
            err.print(f"wrote {len(completions)} completions to {printable(output)}")
        else:
            def show(c):
                if len(prompts) > 1:
                    out.print(f"### {printable(c.id)}")
                out.print(c.text)  # the model's text as is (markup is off on this console)

            completions = gen.run(prompts, on_completion=show)
        if stats:
            gen.print_stats(completions, err)


def _run_to_file(gen, prompts, output: Path, inputs) -> list:
    """Generate into ``output`` atomically, one JSON line per completion as it finishes.

    On a failure or Ctrl-C the finished completions are still written (the error line says how many);
    with none finished, whatever ``output`` held before is kept. If ``output`` itself cannot be written
    (disk full, ...), the finished completions go to standard output instead: produced work is never lost."""
    from ..runtime.errors import AccelError
    from ..runtime.files import AtomicFile

    af = AtomicFile(output, "w", inputs=inputs, what="--output")
    rows: list[str] = []  # JSON lines of the finished completions, in order
    whole = [0, 0]  # lines and bytes that reached the temporary file completely

    def write(c):
        line = json.dumps(c.to_json(), ensure_ascii=False) + "\n"
        rows.append(line)
        af.write(line)
        af.file.flush()
        whole[:] = [len(rows), af.file.tell()]

    try:
        completions = gen.run(prompts, on_completion=write)
        af.commit()
        return completions
    except BaseException as e:
        saved = False
        if whole[0] and af.state == "open":
            try:
                af.file.truncate(whole[1])  # an interrupted write must not leave half a line
                af.commit()
                saved = True
            except (OSError, AccelError):
                pass
        if saved:
            e.add_note(f"the {whole[0]} of {len(prompts)} completions finished before it were written to {output}")
            rows = rows[whole[0]:]  # a completion cut off mid-write (Ctrl-C) goes to stdout below
        if rows:
            for line in rows:
                out.print(line.rstrip("\n"), soft_wrap=True)
            e.add_note(f"{output} could not take them, so {len(rows)} finished completion(s) were printed "
                       "on standard output instead")
        elif not saved:
            e.add_note(f"no completion had finished; {output} was left as it was")
        raise
    finally:
        af.discard()  # no-op after a commit; never leave the temporary file behind


def _check_tree_file(path: str) -> None:
    """A --tree file: small, JSON, and a valid tree (the pack's own rules: ints, prefix-closed, bounded)."""
    from ..runtime.errors import AccelError
    from ..runtime.errors import PackError
    from ..runtime.pack import check_tree

    p = Path(path)
    if not p.is_file():
        raise AccelError(f"--tree file not found: {path}")
    with open(p, "rb") as f:
        data = f.read(_MAX_TREE_FILE + 1)
    if len(data) > _MAX_TREE_FILE:
        raise AccelError(f"--tree {path} is larger than {_MAX_TREE_FILE // 1024} KiB: a tree has at most 1024 paths")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AccelError(f"--tree {path}: not JSON; expected a list of paths like [[0], [0, 0], [1]]") from None
    try:
        check_tree(raw, f"--tree {path}")
    except PackError as e:
        raise AccelError(str(e)) from None


def _context_hint(model: str | None) -> int | None:
    """The model's context length when it can be read without loading the model (a folder's config.json),
    so the prompt-size limit is scaled to it before the slow load; None: the reader's generous default."""
    cfg = Path(model or "").expanduser() / "config.json"
    try:
        if cfg.is_file() and cfg.stat().st_size < 1_000_000:
            n = json.loads(cfg.read_text(encoding="utf-8")).get("max_position_embeddings")
            if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 2**24:
                return n
    except (OSError, ValueError, RecursionError, AttributeError):
        pass
    return None
