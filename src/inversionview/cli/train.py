"""``inversionview`` train-probed, train-decoder, export-decoder, decoders: training runs and the
decoders they give."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (MINUTES_HELP, ForceOpt, JsonOpt, ModelArg, RawOpt, SeedOpt,
                                      TaskOpt, ThreadsOpt, _apply_threads, _emit, _explicit,
                                      _figure, _hold_run_directory, _load, _shape_overrides)
from inversionview.errors import UserError
from inversionview.schedule import EVAL_SECONDS


@app.command("train-probed")
def train_probed_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="counting or addition.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (becomes a model directory).")],
    minutes: Annotated[Optional[float], typer.Option(
        "--minutes", help=MINUTES_HELP, callback=options.MINUTES.callback)] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", help="Budget in steps for the whole run; on --resume it replaces the run's "
        "budget.", callback=options.STEPS.callback)] = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=options.BATCH_SIZE.callback)] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.",
                                      callback=options.LEARNING_RATE.callback)] = 1e-3,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its "
                                         "checkpoint, with its settings and budget.")] = False,
    d_model: Annotated[Optional[int], typer.Option("--d-model", help="Override the task's default width.",
                                                   callback=options.WIDTH.callback)] = None,
    n_heads: Annotated[Optional[int], typer.Option("--n-heads", callback=options.HEADS.callback)] = None,
    n_layers: Annotated[Optional[int], typer.Option("--n-layers", callback=options.LAYERS.callback)] = None,
    objective: Annotated[str, typer.Option("--objective", help="lm: every next token; task: only "
                                           "the task's loss positions (counting: the count digit).")] = "lm",
    checkpoint_every: Annotated[Optional[float], typer.Option(
        "--checkpoint-every", help="Seconds between checkpoints (default 60; the first after "
        "10 s or 100 steps).", callback=options.CHECKPOINT_SECONDS.callback)] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a probed model on its task on fresh samples (CPU by default)."""
    from inversionview.checkpoint import check_run_directory
    from inversionview.probed.train import ProbedTrainingConfig, train_probed

    _apply_threads(threads)
    interval = {} if checkpoint_every is None else {"checkpoint_every_seconds": checkpoint_every}
    if resume:
        given = [("TASK", "task", task, "task"), ("--seed", "seed", seed, "seed"),
                 ("--batch-size", "batch_size", batch_size, "batch_size"), ("--lr", "lr", lr, "lr"),
                 ("--objective", "objective", objective, "objective"),
                 ("--d-model", "model_settings.n_embd", d_model, "d_model"),
                 ("--n-heads", "model_settings.n_head", n_heads, "n_heads"),
                 ("--n-layers", "model_settings.n_layer", n_layers, "n_layers")]
        fixed = _explicit(ctx, given)
        config = ProbedTrainingConfig.resumed(out, minutes=minutes, steps=steps, changes=interval,
                                              fixed=fixed)
        _hold_run_directory(ctx, out)
    else:
        if (minutes is None) == (steps is None):
            raise UserError("give exactly one of --minutes or --steps (--resume continues a run "
                            "with its own)")
        overrides = _shape_overrides(d_model, n_heads, n_layers)
        config = ProbedTrainingConfig(task=task, out=out, minutes=minutes, steps=steps, seed=seed,
                                      batch_size=batch_size, lr=lr, model_overrides=overrides,
                                      objective=objective, **interval)
        options.check_output_directory(out, "--out")
        _hold_run_directory(ctx, out)
        check_run_directory(out, resume=False)
    model = train_probed(config, resume=resume, show_progress=not as_json)
    record = {"out": str(out), "task": task, **{k: model.manifest[k] for k in (
        "steps", "examples", "wall_seconds", "accuracy", "accuracy_examples", "seed", "commit")}}
    _emit(record, as_json, f"saved {out}: accuracy {record['accuracy']:.4f} on "
                           f"{record['accuracy_examples']} fresh samples after {record['steps']} "
                           f"steps ({record['wall_seconds']:.0f} s)")


@app.command("train-decoder")
def train_decoder_command(
    ctx: typer.Context,
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Run directory.")],
    task: TaskOpt = None, raw: RawOpt = False,
    minutes: Annotated[Optional[float], typer.Option(
        "--minutes", help=MINUTES_HELP,
        callback=options.MINUTES.callback)] = None,
    examples: Annotated[Optional[int], typer.Option(
        "--examples", help="Budget in training examples for the whole run; on --resume it "
        "replaces the run's budget.", callback=options.EXAMPLES.callback)] = None,
    preset: Annotated[str, typer.Option("--preset", help="paper (lr 1e-4 constant) or fast.")] = "fast",
    seed: SeedOpt = 0,
    rebalance: Annotated[float, typer.Option("--rebalance", help="Site rebalancing strength (0: uniform).",
                                             callback=options.REBALANCE.callback)] = 0.0,
    site_weights: Annotated[Optional[str], typer.Option(
        "--site-weights", help="Relative sampling weights of the sites, SITE=WEIGHT separated "
        "by commas, * for every site not named (default 1): m1=4 draws m1 four times as often, "
        "m1=1,*=0 trains on m1 alone. Rebalancing multiplies them; the in-ε rates and the "
        "held-out loss are still measured over every site.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its "
                                         "checkpoint, with its settings and budget.")] = False,
    checkpoint_every: Annotated[Optional[float], typer.Option(
        "--checkpoint-every", help="Seconds between checkpoints (default 60; the first after "
        "10 s or 100 steps).", callback=options.CHECKPOINT_SECONDS.callback)] = None,
    eval_every: Annotated[Optional[float], typer.Option(
        "--eval-every", help="Seconds of training between held-out evaluations (default 120; "
        "each measures the decoder and its two controls).", callback=EVAL_SECONDS.callback)] = None,
    threads: ThreadsOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto (cuda if present), cpu, cuda, cuda:N.")] = "auto",
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 autocast where "
                                                     "native), bf16 or fp32; default: the preset's.")] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="A language model's training "
                                                   "text: .txt (a text per line), .jsonl or a "
                                                   "datasets directory.")] = None,
    text_field: Annotated[str, typer.Option("--field", help="The text field of a .jsonl corpus "
                                            "or datasets directory.")] = "text",
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest corpus piece in tokens "
                                            "(longer texts are cut into pieces).",
                                            callback=options.MAX_TOKENS.callback)] = 32,
    positions: Annotated[str, typer.Option(
        "--positions", help="Where each activation is read: uniform (any queryable position), "
        "last (each input's last one), low-bos-attention (for a head, the half of the "
        "positions where it attends least to BOS; other sites: uniform) or last-or-least-bos "
        "(the paper's factual policy: for a head, the last position or the one where it attends "
        "least to BOS, half and half, inputs where it attends only to BOS redrawn); 1 % at BOS.",
        callback=options.POSITIONS.callback)] = "uniform",
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="A local GPT-2 directory (config.json + model.safetensors) with "
        "the probed model's tokenizer: the decoder takes its shape and starts from its "
        "weights (the conditioning starts fresh).")] = None,
    continue_from: Annotated[Optional[Path], typer.Option(
        "--continue-from", help="A trained decoder of this model (a run directory or an "
        "exported decoder, e.g. artifacts/decoder-counting): the run starts from its shape and "
        "weights with a fresh optimizer and schedule, to train it for longer.")] = None,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Peak learning rate (default: the preset's: fast 1e-3, paper 1e-4); "
        "lower, e.g. 3e-4, to go on from --continue-from without undoing it.",
        callback=options.LEARNING_RATE.callback)] = None,
    ball_noise: Annotated[float, typer.Option(
        "--ball-noise", help="Train on the epsilon-ball: each training activation z is moved by "
        "r x |z| in a random direction, r uniform in [0, BALL_NOISE] (0: the paper's recipe, "
        "no noise; 0.1: the ball of epsilon 0.1).", callback=options.BALL_NOISE.callback)] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Train a decoder on a probed model's activations (fresh data every step).

    Runs as DDP under `torchrun --nproc_per_node N` (NCCL on GPUs, gloo on CPU)."""

    from inversionview.checkpoint import check_run_directory
    from inversionview.decoder.pretrained import read_pretrained
    from inversionview.decoder.store import read_manifest
    from inversionview.decoder.train import DecoderTrainingConfig, resolve_device, train_decoder
    from inversionview.distributed import is_lead_process

    _apply_threads(threads)
    resolve_device(device)  # a device that is not here fails before the model loads
    weights = options.parse_site_weights(site_weights, "--site-weights")
    interval = {} if checkpoint_every is None else {"checkpoint_every_seconds": checkpoint_every}
    if eval_every is not None:
        interval["eval_every_seconds"] = eval_every
    if resume:
        given = [("--preset", "preset", preset, "preset"), ("--seed", "seed", seed, "seed"),
                 ("--rebalance", "rebalance", rebalance, "rebalance"),
                 ("--site-weights", "site_weights", weights, "site_weights"),
                 ("--precision", "precision", precision, "precision"),
                 ("--corpus", "corpus", None if corpus is None else str(corpus), "corpus"),
                 ("--field", "field", text_field, "text_field"),
                 ("--max-tokens", "max_tokens", max_tokens, "max_tokens"),
                 ("--positions", "positions", positions, "positions"),
                 ("--init-from", "init_from", None if init_from is None else str(init_from),
                  "init_from"),
                 ("--continue-from", "continue_from",
                  None if continue_from is None else str(continue_from), "continue_from"),
                 ("--lr", "lr", lr, "lr"), ("--ball-noise", "ball_noise", ball_noise, "ball_noise")]
        fixed = _explicit(ctx, given)
        explicit_device = ctx.get_parameter_source("device").name not in ("DEFAULT", "DEFAULT_MAP")
        config = DecoderTrainingConfig.resumed(
            out, minutes=minutes, examples=examples, fixed=fixed,
            changes={**interval, "device": device if explicit_device else None})
        _hold_run_directory(ctx, out)
    else:
        if (minutes is None) == (examples is None):
            raise UserError("give exactly one of --minutes or --examples (--resume continues a "
                            "run with its own)")
        config = DecoderTrainingConfig(out=out, minutes=minutes, examples=examples, preset=preset,
                                       seed=seed, rebalance=rebalance,
                                       site_weights=weights, device=device,
                                       precision=precision, corpus=corpus, field=text_field,
                                       max_tokens=max_tokens, positions=positions,
                                       init_from=init_from, continue_from=continue_from,
                                       lr=lr, ball_noise=ball_noise, **interval)
        options.check_output_directory(out, "--out")
        _hold_run_directory(ctx, out)
        check_run_directory(out, resume=False)  # before the model loads
        if init_from is not None:
            read_pretrained(init_from)  # its config: a wrong directory fails before the model loads
        if continue_from is not None:
            read_manifest(continue_from)  # not a decoder: fails before the model loads
    probed = _load(model, task, raw)
    train_decoder(probed, config, resume=resume, show_progress=not as_json)
    if not is_lead_process():
        return
    manifest = read_manifest(out)
    record = {"out": str(out), "task": probed.task.name, **{k: manifest[k] for k in (
        "steps", "examples", "wall_seconds", "in_epsilon_mean", "in_epsilon", "well_formed",
        "distinct_in_epsilon", "seed", "commit")}}
    _emit(record, as_json, f"saved {out}: mean in-eps rate {record['in_epsilon_mean']:.3f} after "
                           f"{record['examples']} examples ({record['wall_seconds']:.0f} s)")


@app.command("export-decoder")
def export_decoder_command(
    run_dir: Annotated[Path, typer.Argument(help="A train-decoder run directory.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the exported decoder "
                                      "(artifacts/NAME to ship it).")],
    model: Annotated[Optional[str], typer.Option("--model", help="The probed model (default: "
                                                 "the one named in the run's decoder.json).")] = None,
    task: TaskOpt = None, raw: RawOpt = False,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a trained decoder in fp16 and re-measure its in-ε rates as exported."""
    from inversionview.decoder.export import export_decoder
    from inversionview.decoder.store import MANIFEST, read_manifest

    options.check_output_directory(out, "--out", force, marker=MANIFEST)
    manifest = read_manifest(run_dir)
    if model is None and not manifest.get("probed_source"):
        raise UserError(f"{run_dir} does not say which probed model it was trained on; "
                        f"give it with --model")
    probed = _load(model or manifest["probed_source"], task or manifest["task"], raw)
    exported: dict[str, Any] = {}
    options.write_output(out, "--out", lambda path: exported.update(
        export_decoder(run_dir, path, probed, seed=seed)))
    record = {"out": str(out), "in_epsilon_mean": manifest.get("in_epsilon_mean"),
              "exported_in_epsilon_mean": exported["exported_in_epsilon_mean"],
              "exported_in_epsilon": exported["exported_in_epsilon"]}
    at_end = record["in_epsilon_mean"]
    _emit(record, as_json, f"exported {run_dir} to {out} (fp16): mean in-eps "
                           f"{record['exported_in_epsilon_mean']:.3f} as exported"
                           + (f", {at_end:.3f} at the end of training" if isinstance(at_end, float) else ""))


@app.command()
def decoders(
    model: Annotated[Optional[str], typer.Argument(help="Show the decoder found for this probed model.")] = None,
    task: TaskOpt = None, raw: RawOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the bundled decoders (or the one found for MODEL, matched by its weights' hash)."""
    from inversionview.decoder.store import find_decoder, shipped_decoders

    if model is not None:
        probed = _load(model, task, raw)
        found = find_decoder(probed)
        record = {"model": model, "weights_sha256": probed.weights_hash(),
                  "decoder": None if found is None else str(found)}
        _emit(record, as_json, f"{model}: " + (f"decoder {found}" if found else
                                                "no bundled decoder (train one with train-decoder)"))
        return
    entries = {name: {"path": str(path), "task": m.get("task"), "probed_source": m.get("probed_source"),
                      "in_epsilon_mean": m.get("in_epsilon_mean"), "examples": m.get("examples")}
               for name, (path, m) in shipped_decoders().items()}
    lines = [f"{name:28s} {str(e['task']):9s} in-eps {_figure(e['in_epsilon_mean'])}  for {e['probed_source']}"
             for name, e in entries.items()] or ["no bundled decoders"]
    _emit(entries, as_json, "\n".join(lines))
