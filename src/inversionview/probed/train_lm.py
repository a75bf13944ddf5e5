"""Train a small GPT-2 language model, with its own BPE tokenizer, on a text corpus.

    config = LMTrainingConfig(corpus="data/kjv.txt", out="runs/lm-kjv", minutes=45)
    model = train_lm(config)          # out/ is then a self-contained model directory

The model is ``TextTask.probed_config()`` (4 layers, d 256, 4 heads) with ``model_overrides``
and ``n_positions = max_tokens + 2`` (BOS + piece + EOS: the longest input it is trained
on). Its inputs are the corpus' training pieces (``text.sources.CorpusSource``: at most
``max_tokens`` tokens each, 1 % held out by a hash of their content), drawn uniformly with
replacement; the loss is next-token cross-entropy where ``TextTask.loss_mask`` says the next
token is a real token of the model. Held-out loss and perplexity are measured on a fixed set
of held-out pieces (all of them, up to ``eval_examples``) every ``eval_every_seconds`` and at
the end.

Batches are grouped by length (as HuggingFace's ``group_by_length``): ``length_pool``
batches are drawn at once, sorted by length, cut into batches and shuffled, and each batch is
trimmed to its longest row, so that little time is spent on padding. Which pieces a step
trains on is a function of the seed and the step alone, which makes ``resume`` exact.

The run directory holds config.json, model.safetensors, inversionview.json (the manifest,
``"task": "text"``), the tokenizer (tokenizer.json, tokenizer_config.json), metrics.jsonl
and ``checkpoint/`` for ``resume`` (as ``probed.train``). ``ship_lm`` copies the model,
without checkpoint or optimizer, in float16.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from inversionview import provenance
from inversionview.checkpoint import (CheckpointError, RunLog, claim_run_directory,
                                      resumed_config)
from inversionview.errors import OptionError, UserError
from inversionview.files import read_json_object, read_safetensors, sha256_file
from inversionview.options import (BATCH_SIZE, CHECKPOINT_SECONDS, HEADS, LAYERS, LEARNING_RATE,
                                   MINUTES, SEED, STEPS, WIDTH, Range)
from inversionview.probed.model import ProbedModel
from inversionview.probed.subject import Subject
from inversionview.text.counts import TOKEN_COUNTS, write_token_counts
from inversionview.schedule import (EVAL_SECONDS, FIRST_CHECKPOINT_SECONDS,
                                    FIRST_CHECKPOINT_STEPS, GRAD_CLIP, MIN_LR_FRACTION,
                                    WARMUP_STEPS, WEIGHT_DECAY, check_settings, count)
from inversionview.tasks.base import next_token_targets
from inversionview.tasks.text import TextTask
from inversionview.text.bpe import VOCAB_SIZE, train_bpe
from inversionview.text.sources import CorpusSource, read_texts
from inversionview.text.tokenizer import TOKENIZER_FILES, HFTokenizer
from inversionview.training import (LoopSettings, Trainer, evaluation_entry, run_manifest,
                                    run_training)

MAX_TOKENS = Range("max-tokens", 1, 100_000)
LENGTH_POOL = Range("length_pool", 1, 10_000)
HELD_OUT_FRACTION = Range("held_out_fraction", 0, 0.5, integer=False, low_open=True)
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Files of a saved tokenizer (save_pretrained), copied with the model.
TOKENIZER_SAVED = (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json",
                   "merges.txt")
#: What a run writes in its directory; --force removes these before a new run starts.
RUN_FILES = ("checkpoint", "checkpoint.tmp", "checkpoint.old", "metrics.jsonl", "config.json",
             "model.safetensors", "inversionview.json", "token_counts.json", *TOKENIZER_SAVED)


@dataclasses.dataclass
class LMTrainingConfig:
    corpus: Path
    out: Path
    field: str = "text"  # the text field of a .jsonl corpus or a datasets directory
    tokenizer: Path | None = None  # None: train a byte-level BPE of vocab_size on the corpus
    vocab_size: int = 4096
    max_tokens: int = 64
    held_out_fraction: float = 0.01  # of the corpus' pieces, chosen by a hash of their content
    minutes: float | None = None
    steps: int | None = None
    seed: int = 0
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_fraction: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on weight matrices and embeddings only (as nanoGPT)
    grad_clip: float = 1.0
    length_pool: int = 16  # batches drawn at once and grouped by length (1: no grouping)
    eval_every_seconds: float = 60.0
    eval_examples: int = 2_048  # held-out pieces evaluated (all of them if fewer)
    checkpoint_every_seconds: float = 60.0
    first_checkpoint_seconds: float = 10.0
    first_checkpoint_steps: int = 100
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    save_dtype: str = "float32"  # of the final model.safetensors ("float16" to ship)
    corpus_name: str | None = None  # default: the corpus file's stem
    corpus_licence: str | None = None  # recorded in the manifest
    # Start from this GPT-2 model directory's weights (its shape and, unless ``tokenizer``
    # says otherwise, its tokenizer) instead of a random model: training on a new corpus.
    init_from: Path | None = None

    def __post_init__(self) -> None:
        self.corpus, self.out = Path(self.corpus), Path(self.out)
        if self.init_from is not None:
            self.init_from = Path(self.init_from)
            if self.tokenizer is None:
                self.tokenizer = self.init_from
        if self.tokenizer is not None:
            self.tokenizer = Path(self.tokenizer)
        if (self.minutes is None) == (self.steps is None):
            raise OptionError("give exactly one of minutes or steps")
        if self.save_dtype not in SAVE_DTYPES:
            raise OptionError(f"save_dtype must be one of {', '.join(SAVE_DTYPES)}, not "
                              f"{self.save_dtype!r}")
        check_settings(self, {
            "vocab_size": VOCAB_SIZE, "max_tokens": MAX_TOKENS, "minutes": MINUTES,
            "held_out_fraction": HELD_OUT_FRACTION,
            "steps": STEPS, "seed": SEED, "batch_size": BATCH_SIZE, "lr": LEARNING_RATE,
            "min_lr_fraction": MIN_LR_FRACTION, "warmup_steps": WARMUP_STEPS,
            "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP, "length_pool": LENGTH_POOL,
            "eval_every_seconds": EVAL_SECONDS, "eval_examples": count("eval_examples"),
            "checkpoint_every_seconds": CHECKPOINT_SECONDS,
            "first_checkpoint_seconds": FIRST_CHECKPOINT_SECONDS,
            "first_checkpoint_steps": FIRST_CHECKPOINT_STEPS})
        shape = self.model_shape
        for key, spec in (("n_embd", WIDTH), ("n_head", HEADS), ("n_layer", LAYERS)):
            spec.check(shape[key])
        if shape["n_embd"] % shape["n_head"]:
            raise OptionError(f"d-model {shape['n_embd']} is not divisible by n-heads "
                              f"{shape['n_head']}: each head gets d-model / n-heads dimensions")

    @property
    def context(self) -> int:
        """The model's n_positions: the longest input, BOS + piece + EOS, unless overridden."""
        return self.model_overrides.get("n_positions", self.max_tokens + 2)

    @property
    def model_shape(self) -> dict[str, Any]:
        """TextTask's GPT-2 settings with the overrides (the vocabulary not yet known)."""
        stand_in = SimpleNamespace(vocab=SimpleNamespace(model_size=0, bos_id=0),
                                   context=self.context)
        return {**TextTask.probed_config(stand_in), **self.model_overrides}

    @classmethod
    def resumed(cls, out: Path, minutes: float | None = None, steps: int | None = None,
                changes: dict[str, Any] | None = None,
                fixed: dict[str, tuple[str, Any]] | None = None) -> "LMTrainingConfig":
        """The config to continue the run in ``out`` (see ``checkpoint.resumed_config``)."""
        return resumed_config(cls, out, {"minutes": minutes, "steps": steps}, changes, fixed)


# ----- data ------------------------------------------------------------------------------


class LengthGroupedBatches:
    """``get(step)``: the ``[batch_size, length]`` inputs of a step, drawn uniformly from the
    source's training pieces and grouped by length (module docstring); a pure function of
    ``seed`` and ``step``."""

    def __init__(self, source: CorpusSource, batch_size: int, pool: int, seed: int):
        self.source, self.batch_size, self.pool, self.seed = source, batch_size, pool, seed
        self._cached: tuple[int, list[torch.Tensor]] | None = None

    def get(self, step: int) -> torch.Tensor:
        pool_index, slot = divmod(step, self.pool)
        if self._cached is None or self._cached[0] != pool_index:
            self._cached = (pool_index, self._draw(pool_index))
        return self._cached[1][slot]

    def _draw(self, pool_index: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, "pool", pool_index))
        rows = self.source.sample_tokens(self.pool * self.batch_size, generator)
        lengths = (rows != self.source.tokenizer.pad_id).sum(dim=1)
        groups = torch.argsort(lengths, stable=True).view(self.pool, self.batch_size)
        order = torch.randperm(self.pool, generator=generator)
        batches = []
        for group in groups[order]:
            batches.append(rows[group, : int(lengths[group].max())])
        return batches


def _derived_seed(seed: int, *labels: object) -> int:
    """A seed for one purpose of a run, from the run's seed (fixed, not Python's hash())."""
    text = "/".join(str(part) for part in (seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def held_out_tokens(source: CorpusSource, limit: int, seed: int) -> torch.Tensor:
    """``[n, n_ctx]`` the held-out pieces, all of them (in corpus order) when there are at
    most ``limit``, else a seeded sample of ``limit`` without replacement."""
    pieces = source.held_out
    if len(pieces) <= limit:
        chosen = torch.arange(len(pieces))
    else:
        generator = torch.Generator().manual_seed(_derived_seed(seed, "held-out"))
        chosen = torch.randperm(len(pieces), generator=generator)[:limit].sort().values
    return pieces.batch(chosen, source.n_ctx, source.tokenizer)


# ----- loss ------------------------------------------------------------------------------


def token_losses(hf_model: GPT2LMHeadModel, task: TextTask, tokens: torch.Tensor
                 ) -> torch.Tensor:
    """Cross-entropy of every trained next-token prediction of a batch (``loss_mask``), 1-D.
    Decoder-only ids (EOS, PAD beyond the vocabulary) are read as id 0: they only follow a
    text's last real token, which a causal model cannot see from earlier positions."""
    ids = tokens.masked_fill(tokens >= hf_model.config.vocab_size, 0)
    logits = hf_model(ids).logits
    targets = next_token_targets(tokens, task.vocab.pad_id)
    mask = task.loss_mask(tokens)
    return F.cross_entropy(logits[mask].float(), targets[mask], reduction="none")


@torch.no_grad()
def held_out_loss(hf_model: GPT2LMHeadModel, task: TextTask, tokens: torch.Tensor,
                  chunk: int = 64) -> tuple[float, int]:
    """(mean cross-entropy in nats per predicted token, predicted tokens) over ``tokens``
    (read in chunks of similar length, each trimmed to its longest row)."""
    was_training = hf_model.training
    hf_model.eval()
    lengths = (tokens != task.vocab.pad_id).sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    total, predicted = 0.0, 0
    for start in range(0, len(tokens), chunk):
        rows = order[start:start + chunk]
        losses = token_losses(hf_model, task, tokens[rows, : int(lengths[rows].max())])
        total += losses.double().sum().item()
        predicted += losses.numel()
    hf_model.train(was_training)
    return total / max(predicted, 1), predicted


# ----- the run ---------------------------------------------------------------------------


def _corpus_record(config: LMTrainingConfig, texts: list[str]) -> dict[str, Any]:
    if config.corpus.is_file():
        sha256, hashed = sha256_file(config.corpus), "the file's bytes"
    else:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
        sha256, hashed = digest.hexdigest(), "its texts, each followed by a newline"
    return {"name": config.corpus_name or config.corpus.stem,
            "path": provenance.portable_path(config.corpus), "field": config.field,
            "texts": len(texts), "sha256": sha256, "sha256_of": hashed,
            "licence": config.corpus_licence or "not stated"}


def _tokenizer(config: LMTrainingConfig, texts: list[str], resume: bool) -> HFTokenizer:
    """The run's tokenizer, saved in ``out``: trained there, or copied from ``tokenizer``; a
    resumed run reads the one in ``out``."""
    if not resume:
        if config.tokenizer is None:
            train_bpe(texts, config.vocab_size, config.out)
        else:
            given = HFTokenizer.from_directory(config.tokenizer, model_size=10**9)
            given.hf.save_pretrained(str(config.out))
    from transformers import AutoTokenizer

    own = len(AutoTokenizer.from_pretrained(str(config.out), local_files_only=True))
    return HFTokenizer.from_directory(config.out, model_size=own)


def _build_model(task: TextTask, config: LMTrainingConfig) -> GPT2LMHeadModel:
    if config.init_from is not None:
        return _initial_model(task, config)
    settings = {**task.probed_config(), **config.model_overrides}
    gpt2_config = GPT2Config(**settings)
    gpt2_config.tie_word_embeddings = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return GPT2LMHeadModel(gpt2_config)


#: The option that sets each model setting (``_shape_overrides`` in the CLI).
_SHAPE_OPTIONS = {"n_embd": "--d-model", "n_head": "--n-heads", "n_layer": "--n-layers"}


def check_init_from(config: LMTrainingConfig) -> None:
    """Refuse a new run whose ``init_from`` model does not fit what else it was given: a
    model setting (``model_overrides``: --d-model, --n-heads, --n-layers) other than the
    model's own (it keeps its shape), or a tokenizer other than the model's (its embeddings
    are indexed by its own tokenizer): another vocabulary where the directory holds one, or
    another number of tokens than it has embeddings. Reads only configs and tokenizers, so
    the command calls it before any work."""
    directory = config.init_from
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"--init-from {directory} has no config.json; give a GPT-2 model "
                              "directory")
    try:
        settings = GPT2Config.from_pretrained(str(directory), local_files_only=True).to_dict()
    except (OSError, ValueError) as error:
        raise CheckpointError(f"--init-from {directory} cannot be read as a GPT-2 model "
                              f"({str(error).splitlines()[0]})") from None
    settings["n_inner"] = settings.get("n_inner") or 4 * settings["n_embd"]
    overrides = dict(config.model_overrides)
    if overrides.get("n_inner") == 4 * overrides.get("n_embd", -1):
        del overrides["n_inner"]  # --d-model's MLP: a --d-model that agrees keeps the model's
    for name, value in overrides.items():
        if name in settings and settings[name] != value:
            option = _SHAPE_OPTIONS.get(name, f"model setting {name}")
            raise OptionError(f"{option} {value} differs from the {settings[name]} of --init-from "
                              f"{directory}: a model started from another keeps its shape "
                              f"(leave the option out)")
    if config.tokenizer.resolve() == directory.resolve():
        return
    rows = settings["vocab_size"]
    given = HFTokenizer.from_directory(config.tokenizer, model_size=rows)
    if len(given.hf) != rows:
        raise OptionError(f"--tokenizer {config.tokenizer} has {len(given.hf):,} tokens but "
                          f"--init-from {directory} has {rows:,} token embeddings, indexed by "
                          f"its own tokenizer; leave --tokenizer out to train with that one")
    if any((directory / name).exists() for name in TOKENIZER_FILES):
        own = HFTokenizer.from_directory(directory, model_size=rows).fingerprint()
        if given.fingerprint() != own:
            raise OptionError(f"--tokenizer {config.tokenizer} is not the tokenizer of "
                              f"--init-from {directory} (vocabulary sha256 "
                              f"{given.fingerprint()[:12]} vs {own[:12]}), whose token "
                              f"embeddings are its own tokenizer's; leave --tokenizer out to "
                              f"train with that one")


def _initial_model(task: TextTask, config: LMTrainingConfig) -> GPT2LMHeadModel:
    """The model in ``config.init_from``, checked against the run's tokenizer and pieces."""
    directory = config.init_from
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"--init-from {directory} has no config.json; give a GPT-2 model "
                              "directory")
    try:
        model = GPT2LMHeadModel.from_pretrained(str(directory), local_files_only=True,
                                                torch_dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"--init-from {directory} cannot be read as a GPT-2 model "
                              f"({str(error).splitlines()[0]})") from None
    if model.config.vocab_size < task.vocab.model_size:
        raise CheckpointError(f"--init-from {directory} has {model.config.vocab_size} token "
                              f"embeddings but the tokenizer has {task.vocab.model_size} tokens")
    if model.config.n_positions < config.context:
        raise CheckpointError(f"--init-from {directory} reads {model.config.n_positions} "
                              f"positions; pieces of --max-tokens {config.max_tokens} need "
                              f"{config.context}")
    return model


def _optimizer(model: GPT2LMHeadModel, config: LMTrainingConfig) -> torch.optim.AdamW:
    # Decay weight matrices and embeddings, not biases or LayerNorm scales (as nanoGPT).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr)


def train_lm(config: LMTrainingConfig, resume: bool = False,
             show_progress: bool = True) -> Subject:
    """Train within ``config``'s budget of steps or minutes (``training.run_training``).
    ``resume`` continues the run in ``config.out`` from its checkpoint
    (``LMTrainingConfig.resumed`` gives the config it was started with); without it, a
    directory that holds a checkpoint is refused, and so is a directory another run is
    training in (``checkpoint.claim_run_directory``)."""
    with claim_run_directory(config.out, resume):
        return _train(config, resume, show_progress)


def _train(config: LMTrainingConfig, resume: bool, show_progress: bool) -> Subject:
    if config.init_from is not None and not resume:
        check_init_from(config)
    texts = read_texts(config.corpus, config.field)  # never empty
    corpus = _corpus_record(config, texts)
    config.out.mkdir(parents=True, exist_ok=True)
    started_at_commit = provenance.commit()
    tokenizer = _tokenizer(config, texts, resume)
    if not (config.out / TOKEN_COUNTS).exists():  # for --ban-rare without a corpus
        write_token_counts(config.out, tokenizer, texts, corpus)
    source = CorpusSource(texts, tokenizer, config.max_tokens, config.held_out_fraction,
                          name=corpus["name"])
    task = TextTask(tokenizer, config.context).with_source(source)
    hf_model = _build_model(task, config)
    model = Subject(ProbedModel(hf_model=hf_model, tokenizer=tokenizer, source=str(config.out)),
                    task)
    optimizer = _optimizer(hf_model, config)
    batches = LengthGroupedBatches(source, config.batch_size, config.length_pool, config.seed)
    eval_tokens = held_out_tokens(source, config.eval_examples, config.seed)

    run = RunLog(config.out, {})  # the data is a function of seed and step: no generator
    trained_tokens, window_losses = 0, []  # losses of the steps since the last evaluation
    if resume:
        state, record = run.resume(optimizer)
        _check_same_run(config, record, corpus, tokenizer)
        hf_model.load_state_dict(state, strict=False)
        hf_model.tie_weights()
        trained_tokens, window_losses = record.get("tokens", 0), record.get("window", [])
    else:
        run.start(dropout_seed=_derived_seed(config.seed, "dropout"))

    def batch_loss(step: int) -> tuple[torch.Tensor, int]:
        nonlocal trained_tokens
        losses = token_losses(hf_model, task, batches.get(step))
        loss = losses.mean()
        trained_tokens += losses.numel()
        window_losses.append(loss.item())
        return loss, losses.numel()

    def evaluate_now() -> None:
        loss, _ = held_out_loss(hf_model, task, eval_tokens)
        train_loss = sum(window_losses) / len(window_losses) if window_losses else None
        window_losses.clear()
        lr = optimizer.param_groups[0]["lr"]  # the last step's
        run.log(evaluation_entry(run, tokens=trained_tokens, lr=lr, train_loss=train_loss,
                                 held_out_loss=loss, held_out_perplexity=math.exp(loss)))

    def checkpoint_now() -> None:
        run.checkpoint(model.weights(), optimizer, config=_jsonable(config),
                       tokens=trained_tokens, window=window_losses, corpus_sha256=corpus["sha256"],
                       tokenizer_fingerprint=tokenizer.fingerprint())

    run_training(run, Trainer(
        name="train-lm", model=hf_model, optimizer=optimizer, batch_loss=batch_loss,
        evaluate=evaluate_now, checkpoint=checkpoint_now,
        postfix=lambda loss, rate, lr: dict(loss=f"{loss.item():.3f}", tok_s=f"{rate:.0f}")),
        LoopSettings.of(config, steps=config.steps), show_progress)

    final = run.history[-1]
    manifest = {
        **run_manifest(run, config.seed, started_at_commit, steps=run.step,
                       tokens=trained_tokens,
                       tokens_per_second=round(trained_tokens / max(run.elapsed, 1e-9), 1)),
        "held_out_loss": final["held_out_loss"],
        "held_out_perplexity": final["held_out_perplexity"],
        "held_out": {"pieces": len(eval_tokens),
                     "predicted_tokens": int(task.loss_mask(eval_tokens).sum()),
                     "separate_from_training": source.held_out_is_separate,
                     "loss_unit": "nats per predicted token (loss_mask)"},
        "corpus": {**corpus, "pieces": len(source.train) + len(source.held_out),
                   "held_out_pieces": len(source.held_out), "max_tokens": config.max_tokens},
        "tokenizer": {"kind": "byte-level BPE (trained on the whole corpus, held-out pieces "
                              "included)" if config.tokenizer is None else "given",
                      "vocab_size": len(tokenizer.hf), "fingerprint": tokenizer.fingerprint()},
        "init_from": None if config.init_from is None else {
            "path": provenance.portable_path(config.init_from),
            "weights_sha256": _sha256_or_none(config.init_from / "model.safetensors")},
        "parameters": sum(p.numel() for p in hf_model.parameters()),
        "weights_dtype": config.save_dtype,
        "training": _jsonable(config),
        "history": run.history,
    }
    model.model.manifest = manifest
    # Without inversionview.json the directory is no model of this toolkit: a kill while
    # saving leaves no manifest that describes other weights; --resume saves again.
    (config.out / "inversionview.json").unlink(missing_ok=True)
    _save(model, config.out, manifest, SAVE_DTYPES[config.save_dtype])
    hf_model.eval()
    return model


def _check_same_run(config: LMTrainingConfig, record: dict[str, Any], corpus: dict[str, Any],
                    tokenizer: HFTokenizer) -> None:
    where = config.out / "checkpoint"
    if record.get("corpus_sha256") != corpus["sha256"]:
        raise CheckpointError(f"the corpus {config.corpus} differs from the one the run in "
                              f"{config.out} was trained on (sha256 in {where}); resume with "
                              f"the same corpus")
    if record.get("tokenizer_fingerprint") != tokenizer.fingerprint():
        raise CheckpointError(f"the tokenizer in {config.out} differs from the one the run was "
                              f"trained with ({where}); resume needs the run's own tokenizer")


def _save(model: Subject, directory: Path, manifest: dict[str, Any],
          dtype: torch.dtype) -> None:
    """Save ``model`` (weights in ``dtype``) and its tokenizer in ``directory``."""
    if dtype != torch.float32:
        copy = GPT2LMHeadModel(model.config)
        copy.load_state_dict(model.hf_model.state_dict())
        model = Subject(ProbedModel(hf_model=copy.to(dtype), tokenizer=model.tokenizer,
                                    source=model.source), model.task)
    if directory.resolve() != Path(model.task.vocab.source).resolve():
        model.task.vocab.hf.save_pretrained(str(directory))
    model.save(directory, manifest)


def _jsonable(config: LMTrainingConfig) -> dict[str, Any]:
    record = dataclasses.asdict(config)
    for name in ("corpus", "out", "tokenizer", "init_from"):
        if record[name] is not None:
            record[name] = provenance.portable_path(record[name])
    return record


def remove_run(out: Path) -> None:
    """Remove what a run wrote in ``out`` (``RUN_FILES``), for ``--force``; nothing else."""
    for name in RUN_FILES:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


# ----- shipping ---------------------------------------------------------------------------


def ship_lm(run_directory: str | Path, destination: str | Path,
            dtype: torch.dtype = torch.float16, task: str = TextTask.name,
            extra: dict[str, Any] | None = None) -> Path:
    """Copy the trained model in ``run_directory`` to ``destination`` for shipping: weights
    in ``dtype``, config, tokenizer and manifest; no checkpoint, optimizer or metrics.
    ``task``: what the shipped manifest says the model is read as (``text``, ``ioi``);
    ``extra``: more manifest fields (quality figures, the default query)."""
    from inversionview.tasks import TEXT_TASKS, text_task

    run_directory, destination = Path(run_directory), Path(destination)
    manifest = read_json_object(run_directory / "inversionview.json", UserError,
                                "the manifest of a model trained by train-lm")
    if manifest.get("task") != TextTask.name:
        raise UserError(f"{run_directory / 'inversionview.json'} is not a language model of "
                        f"train-lm (task {manifest.get('task')!r}, expected 'text')")
    settings = read_json_object(run_directory / "config.json", UserError, "a GPT-2 config")
    hf_model = GPT2LMHeadModel(GPT2Config(**settings))
    state = read_safetensors(run_directory / "model.safetensors", UserError, "the model weights")
    hf_model.load_state_dict(state, strict=False)
    hf_model.tie_weights()
    tokenizer = HFTokenizer.from_directory(run_directory, model_size=hf_model.config.vocab_size)
    if task not in TEXT_TASKS:
        raise UserError(f"unknown task {task!r} for a language model; use one of "
                        f"{', '.join(TEXT_TASKS)}")
    task = text_task(task)(tokenizer, hf_model.config.n_positions)
    record = {key: value for key, value in manifest.items()
              if key not in ("kind", "task", "weights_sha256")}
    record.update(weights_dtype=str(dtype).removeprefix("torch."),
                  shipped_from=provenance.portable_path(run_directory), **(extra or {}))
    destination.mkdir(parents=True, exist_ok=True)
    tokenizer.hf.save_pretrained(str(destination))
    if (run_directory / TOKEN_COUNTS).is_file():
        shutil.copyfile(run_directory / TOKEN_COUNTS, destination / TOKEN_COUNTS)
    Subject(ProbedModel(hf_model=hf_model.to(dtype), tokenizer=tokenizer), task).save(
        destination, record)
    return destination


__all__ = ["LMTrainingConfig", "LengthGroupedBatches", "check_init_from", "held_out_loss",
           "held_out_tokens", "remove_run", "ship_lm", "token_losses", "train_lm"]


def _sha256_or_none(path: Path) -> str | None:
    import hashlib

    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
