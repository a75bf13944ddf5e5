"""``inversionview train-lm``: train a small GPT-2 language model, with its own BPE
tokenizer, on a text corpus (a thin shell over ``probed.train_lm``)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (MINUTES_HELP, ForceOpt, JsonOpt, SeedOpt, ThreadsOpt,
                                      _apply_threads, _emit, _explicit, _hold_run_directory,
                                      _shape_overrides)
from inversionview.errors import UserError
from inversionview.schedule import EVAL_SECONDS
from inversionview.text.bpe import VOCAB_SIZE


@app.command("train-lm")
def train_lm_command(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Option(
        "--corpus", help="The text: a .txt file (one text per line), a .jsonl file or a "
        "datasets directory.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (becomes a model "
                                      "directory with its tokenizer).")],
    field: Annotated[str, typer.Option("--field", help="The text field of a .jsonl file "
                                       "or datasets directory.")] = "text",
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="Start from this GPT-2 model directory (its weights, shape and "
        "tokenizer) instead of a random model: train it on a new corpus.")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="A tokenizer directory to use (default: train a byte-level "
        "BPE of --vocab-size on the corpus).")] = None,
    vocab_size: Annotated[int, typer.Option(
        "--vocab-size", help="Tokens of the BPE trained on the corpus.",
        callback=VOCAB_SIZE.callback)] = 4096,
    max_tokens: Annotated[int, typer.Option(
        "--max-tokens", help="Longest piece of text (tokens); longer texts are cut.")] = 64,
    minutes: Annotated[Optional[float], typer.Option(
        "--minutes", help=MINUTES_HELP,
        callback=options.MINUTES.callback)] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", help="Budget in steps for the whole run; on --resume it replaces the "
        "run's budget.", callback=options.STEPS.callback)] = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Pieces per step.",
                                            callback=options.BATCH_SIZE.callback)] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (warmup, cosine).",
                                      callback=options.LEARNING_RATE.callback)] = 1e-3,
    d_model: Annotated[Optional[int], typer.Option(
        "--d-model", help="Width (default 256).", callback=options.WIDTH.callback)] = None,
    n_layers: Annotated[Optional[int], typer.Option(
        "--n-layers", help="Layers (default 4).", callback=options.LAYERS.callback)] = None,
    n_heads: Annotated[Optional[int], typer.Option(
        "--n-heads", help="Heads (default 4).", callback=options.HEADS.callback)] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Save the final weights in float16 "
                                       "(half the size; for shipping).", metavar="")] = False,
    corpus_licence: Annotated[Optional[str], typer.Option(
        "--corpus-licence", help="The corpus' licence, recorded in the manifest.")] = None,
    eval_every: Annotated[Optional[float], typer.Option(
        "--eval-every", help="Seconds between held-out evaluations (default 60).",
        callback=EVAL_SECONDS.callback)] = None,
    checkpoint_every: Annotated[Optional[float], typer.Option(
        "--checkpoint-every", help="Seconds between checkpoints (default 60; the first "
        "after 10 s or 100 steps).", callback=options.CHECKPOINT_SECONDS.callback)] = None,
    threads: ThreadsOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in OUT from its checkpoint, with its settings "
        "and budget.", metavar="")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a small GPT-2 language model and its BPE tokenizer on a text corpus."""
    from inversionview.checkpoint import check_run_directory
    from inversionview.probed.train_lm import (LMTrainingConfig, check_init_from, remove_run,
                                               train_lm)

    _apply_threads(threads)
    changes = {"checkpoint_every_seconds": checkpoint_every, "eval_every_seconds": eval_every}
    if resume:
        if force:
            raise UserError("--force starts the run in OUT over; it cannot go with --resume")
        # The corpus may have moved: train_lm checks that its content (sha256) is the
        # run's. A resumed run reads its tokenizer from OUT (checked by fingerprint).
        changes.update(corpus=corpus, tokenizer=tokenizer)
        fixed = _explicit(ctx, [
            ("--field", "field", field, "field"),
            ("--vocab-size", "vocab_size", vocab_size, "vocab_size"),
            ("--max-tokens", "max_tokens", max_tokens, "max_tokens"),
            ("--seed", "seed", seed, "seed"),
            ("--batch-size", "batch_size", batch_size, "batch_size"), ("--lr", "lr", lr, "lr"),
            ("--d-model", "model_shape.n_embd", d_model, "d_model"),
            ("--n-layers", "model_shape.n_layer", n_layers, "n_layers"),
            ("--n-heads", "model_shape.n_head", n_heads, "n_heads")])
        config = LMTrainingConfig.resumed(out, minutes=minutes, steps=steps,
                                          changes=changes, fixed=fixed)
        _hold_run_directory(ctx, out)
    else:
        if (minutes is None) == (steps is None):
            raise UserError("give exactly one of --minutes or --steps (--resume continues "
                            "a run with its own)")
        if (init_from is not None or tokenizer is not None) and _explicit(
                ctx, [("--vocab-size", "vocab_size", vocab_size, "vocab_size")]):
            given = "--init-from" if init_from is not None else "--tokenizer"
            raise UserError(f"--vocab-size trains a new tokenizer; with {given} the model uses "
                            f"that tokenizer's vocabulary: give one or the other")
        overrides = _shape_overrides(d_model, n_heads, n_layers)
        config = LMTrainingConfig(
            corpus=corpus, out=out, field=field, tokenizer=tokenizer, vocab_size=vocab_size,
            max_tokens=max_tokens, minutes=minutes, steps=steps, seed=seed,
            batch_size=batch_size, lr=lr, model_overrides=overrides,
            save_dtype="float16" if fp16 else "float32", corpus_licence=corpus_licence,
            init_from=init_from,
            **{name: value for name, value in changes.items() if value is not None})
        if init_from is not None:
            check_init_from(config)  # before --force removes the run in OUT
        options.check_output_directory(out, "--out")
        _hold_run_directory(ctx, out)
        if force:
            remove_run(out)
        check_run_directory(out, resume=False)
    model = train_lm(config, resume=resume, show_progress=not as_json)
    keys = ("steps", "tokens", "tokens_per_second", "wall_seconds", "held_out_loss",
            "held_out_perplexity", "seed", "commit")
    record = {"out": str(out), **{key: model.manifest[key] for key in keys}}
    _emit(record, as_json,
          f"saved {out}: held-out loss {record['held_out_loss']:.4f} (perplexity "
          f"{record['held_out_perplexity']:.2f}) after {record['steps']:,} steps, "
          f"{record['tokens']:,} tokens ({record['wall_seconds']:.0f} s, "
          f"{record['tokens_per_second']:.0f} tokens/s)")
