"""``inversionview`` models, eval-probed, activation, inspect: what the bundled models are and what
a model does with one input."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (JsonOpt, ModelArg, RawOpt, SeedOpt, TaskOpt, _emit, _load)


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the bundled artifacts and the known tasks and model kinds."""
    from inversionview.artifacts import list_artifacts
    from inversionview.tasks import TASKS

    artifacts = {
        name: {"path": str(path), "kind": manifest.get("kind"), "task": manifest.get("task"),
               "accuracy": manifest.get("accuracy")}
        for name, (path, manifest) in list_artifacts().items()
    }
    from inversionview.tasks import TEXT_TASKS, text_task

    record = {
        "artifacts": artifacts,
        "tasks": {name: {"sites": list(cls.sites), "positions": list(cls.position_names)}
                  for name, cls in TASKS.items()},
        "language_model_tasks": {name: {"positions": list(text_task(name).position_names)}
                                 for name in TEXT_TASKS},
        "model_kinds": ["probed-model directory (inversionview.json names its task)",
                        "HuggingFace GPT-2 directory (the task inferred from its vocabulary, "
                        "or --task)",
                        "causal LM directory with its tokenizer (any language-model task: "
                        "--task text, ioi or factual)"],
    }
    lines = ["Bundled artifacts:"]
    name_width = max([12] + [len(name) for name in artifacts])
    for name, info in artifacts.items():
        accuracy = f"accuracy {info['accuracy']:.4f}" if isinstance(info["accuracy"], float) else ""
        lines.append(f"  {name:<{name_width}} {info['kind'] or '?':<14} task={info['task'] or '?':<9} "
                     f"{accuracy:<15} {info['path']}")
    if not artifacts:
        lines.append("  (none)")
    lines.append("Tasks:")
    for name, info in record["tasks"].items():
        lines.append(f"  {name:<9} sites: {' '.join(info['sites'])}")
        lines.append(f"  {'':<9} positions: {' '.join(info['positions'])} (or an index, 0 = BOS)")
    lines.append("Language-model tasks (sites: the model's own):")
    for name, info in record["language_model_tasks"].items():
        extra = ", ".join(["an index", "a token"] + [p for p in ("last", "bos")
                                                      if p not in info["positions"]])
        lines.append(f"  {name:<9} positions: {' '.join(info['positions'])} (or {extra})")
    lines.append("Model kinds: " + "; ".join(record["model_kinds"]))
    _emit(record, as_json, "\n".join(lines))


@app.command("eval-probed")
def eval_probed(model: ModelArg, task: TaskOpt = None, raw: RawOpt = False,
                n: Annotated[int, typer.Option("--n", help="Fresh samples to evaluate.",
                                               callback=options.EVAL_SAMPLES.callback)] = 20_000,
                seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Accuracy of a probed model on fresh samples of its task."""
    from inversionview.probed.evaluate import accuracy

    probed = _load(model, task, raw)
    value = accuracy(probed, n=n, seed=seed)
    record = {"model": model, "task": probed.task.name, "n": n, "accuracy": value}
    _emit(record, as_json, f"{model} ({probed.task.name}): accuracy {value:.4f} on {n} fresh samples (seed {seed})")


@app.command()
def activation(model: ModelArg,
               input_text: Annotated[str, typer.Option("--input", help="The input text.")],
               site: Annotated[str, typer.Option("--site", help="Site, e.g. a0.0 or blocks.0.hook_resid_mid.")],
               position: Annotated[str, typer.Option("--position", help="Named position or index (0 = BOS).")],
               task: TaskOpt = None, raw: RawOpt = False, as_json: JsonOpt = False) -> None:
    """The activation vector at one site and position of an input."""
    probed = _load(model, task, raw)
    the_site = probed.site(site)
    text = probed.task.normalize(input_text)
    index = probed.task.resolve_position(text, position)
    vector = probed.activations(probed.tokens(text), the_site, index)[0]
    record = {"site": the_site.short, "hook": the_site.hook, "position": index,
              "position_label": probed.task.position_label(text, index),
              "vector": [round(v, 6) for v in vector.tolist()], "norm": vector.norm().item()}
    human = (f"{text}  site {the_site.short} ({the_site.hook})  position {index} "
             f"({record['position_label']})\nnorm {record['norm']:.4f}\n"
             + " ".join(f"{v:+.3f}" for v in vector.tolist()))
    _emit(record, as_json, human)


@app.command()
def inspect(model: Annotated[str, typer.Argument(help="Model (default: the bundled counting model).")] = "counting",
            input_text: Annotated[Optional[str], typer.Option("--input", help="Input text (default: a sample).")] = None,
            task: TaskOpt = None, raw: RawOpt = False, seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Run one input: the model's prediction and the activation norm at every site and position."""
    from inversionview.inspect import inspect_input

    probed = _load(model, task, raw)
    report = inspect_input(probed, input_text, seed=seed)
    _emit(report.to_record(), as_json, report.render())
