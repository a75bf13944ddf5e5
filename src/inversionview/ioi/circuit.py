"""How well a model does IOI, and which of its heads do what: measured, not assumed (issue 15).

    report = evaluate_ioi(model, n=500, split="eval")     # accuracy and logit difference
    scores = head_scores(model, n=200)                     # every head's scores
    roles = classify(scores)                               # the circuit's heads by role

Per head (``HeadScore``), all means over seeded prompts:

- attention from END to IO, to S1 and to S2, and from S2 to S1 (duplicate token) and to
  S1+1 (induction) on IOI prompts;
- on repeated runs of random tokens (``BOS r1..rk r1..rk``): the duplicate-token score
  (attention from a repeated token to its first copy), the induction score (to the token
  after its first copy) and, on the first half, the previous-token score;
- the copying score (Wang et al. 2022): the head's OV circuit applied to the residual
  stream of a name after layer 0, read through the unembedding: the fraction of names that
  come out among the 5 most raised tokens (negative: most lowered). It reads the processed
  weights, so it is computed for GPT-2-family models (the fast path) and None otherwise;
- activation patching with the ABC contrast (S2 replaced by a third name): the change of the
  mean logit difference IO - S when this head's output at every position (``patch_all``) or
  at END only (``patch_end``) is taken from the ABC run, as a fraction of the full effect
  (ABC run LD - original LD). -1 means the head alone carries all of it.

``classify`` turns scores into roles with the thresholds in ``ROLE_RULES`` (stated in the
report, so a reader can disagree with them).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch

from inversionview.ioi.task import IOITask
from inversionview.probed.evaluate import answer_logits
from inversionview.probed.subject import Subject
from inversionview.probed.sites import Site
from inversionview.tasks.base import TaskInputError

#: A head is in a role when every one of its scores passes (a fraction of the full ABC
#: effect for the patching scores: 1 when patching the head alone moves the logit difference
#: as far as the whole ABC run does, negative when it moves it the other way; attention and
#: copying scores are fractions too).
ROLE_RULES: dict[str, dict[str, tuple[str, float]]] = {
    "name mover": {"attn_end_io": (">=", 0.3), "copying": (">=", 0.5), "patch_end": (">=", 0.05)},
    "negative name mover": {"attn_end_io": (">=", 0.3), "negative_copying": (">=", 0.5),
                            "patch_end": ("<=", -0.05)},
    "s-inhibition": {"attn_end_s2": (">=", 0.3), "patch_all": (">=", 0.05)},
    "induction": {"induction": (">=", 0.3)},
    "duplicate token": {"duplicate": (">=", 0.3)},
    "previous token": {"previous": (">=", 0.4)},
}
EVAL_KINDS = ("ioi", "late")
TOP_K = 5  # the copying score's "among the most raised tokens"
REPEAT_LENGTH = 10  # tokens in each half of a repeated random run


@dataclasses.dataclass
class HeadScore:
    layer: int
    head: int
    attn_end_io: float
    attn_end_s1: float
    attn_end_s2: float
    attn_s2_s1: float
    attn_s2_s1_next: float
    duplicate: float
    induction: float
    previous: float
    copying: float | None
    negative_copying: float | None
    patch_all: float
    patch_end: float

    @property
    def name(self) -> str:
        return f"a{self.layer}.{self.head}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}  # head: its index in the layer


def _ioi_task(model: Subject) -> IOITask:
    """The subject's task, which must be this case study's own."""
    if not isinstance(model.task, IOITask):
        raise TaskInputError("this needs the model read as IOI: give --task ioi (or a model "
                             "whose manifest says ioi)")
    return model.task


@torch.no_grad()
def evaluate_ioi(model: Subject, n: int = 500, seed: int = 0, split: str = "eval",
                 kind: str = "ioi") -> dict[str, Any]:
    """Top-1 accuracy (IO is the most likely next token), IO-over-S accuracy and the logit
    difference IO - S on ``n`` prompts of the ``split`` templates; per template and order.
    ``kind`` "late" adds a third name just before the end (``IOIGenerator.late``): it tells
    a model that avoids the repeated name from one that avoids the most recent one."""
    if kind not in EVAL_KINDS:
        raise TaskInputError(f"unknown prompt kind {kind!r}; use one of {', '.join(EVAL_KINDS)}")
    task = _ioi_task(model)
    prompts = task.prompts.prompts(n, seed, split)
    if kind == "late":
        prompts = [task.prompts.late(p, seed * 1_000_003 + i) for i, p in enumerate(prompts)]
    logits = answer_logits(model, [p.text for p in prompts])
    io = torch.tensor([task.prompts.name_ids[p.io] for p in prompts])
    s = torch.tensor([task.prompts.name_ids[p.s] for p in prompts])
    rows = torch.arange(n)
    difference = logits[rows, io] - logits[rows, s]
    top1 = logits.argmax(dim=1) == io

    def summary(mask: torch.Tensor) -> dict[str, float]:
        return {"n": int(mask.sum()), "top1_accuracy": float(top1[mask].float().mean()),
                "io_over_s": float((difference[mask] > 0).float().mean()),
                "logit_difference": float(difference[mask].mean())}

    by_template = {t: summary(torch.tensor([p.template == t for p in prompts]))
                   for t in sorted({p.template for p in prompts})}
    by_order = {o: summary(torch.tensor([p.order == o for p in prompts]))
                for o in sorted({p.order for p in prompts})}
    return {"split": split, "kind": kind, "seed": seed, **summary(torch.ones(n, dtype=torch.bool)),
            "logit_difference_std": float(difference.std()) if n > 1 else 0.0,
            "by_template": by_template, "by_order": by_order}


# ----- attention scores -----------------------------------------------------------------------


@torch.no_grad()
def _ioi_attention(model: Subject, prompts) -> dict[str, torch.Tensor]:
    """``[layers, heads]`` mean attention END->IO, END->S1, END->S2, S2->S1, S2->S1+1."""
    tokens = model.tokens([p.text for p in prompts])
    at = {name: torch.tensor([p.positions[name] for p in prompts], device=tokens.device)
          for name in ("IO", "S1", "S1+1", "S2", "END")}
    rows = torch.arange(len(prompts), device=tokens.device)
    pairs = {"attn_end_io": ("END", "IO"), "attn_end_s1": ("END", "S1"),
             "attn_end_s2": ("END", "S2"), "attn_s2_s1": ("S2", "S1"),
             "attn_s2_s1_next": ("S2", "S1+1")}
    found = {key: torch.zeros(model.n_layers, model.n_heads) for key in pairs}
    for layer in range(model.n_layers):
        pattern = model.attention_patterns(tokens, layer)  # [b, h, q, k]
        for key, (query, key_position) in pairs.items():
            found[key][layer] = pattern[rows, :, at[query], at[key_position]].float().mean(0).cpu()
    return found


@torch.no_grad()
def repeated_tokens(model: Subject, n: int, seed: int, length: int = REPEAT_LENGTH
                    ) -> torch.Tensor:
    """``[n, 1 + 2 * length]`` BOS, ``length`` random ordinary tokens, the same again."""
    vocab = model.task.vocab
    special = {vocab.bos_id, vocab.eos_id, vocab.pad_id}
    ordinary = torch.tensor([i for i in range(min(len(vocab.hf), model.config.vocab_size))
                             if i not in special])
    generator = torch.Generator().manual_seed(seed)
    run = ordinary[torch.randint(len(ordinary), (n, length), generator=generator)]
    bos = torch.full((n, 1), vocab.bos_id)
    return torch.cat([bos, run, run], dim=1).to(model.device)


@torch.no_grad()
def _repeat_scores(model: Subject, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``[layers, heads]`` duplicate-token, induction and previous-token scores."""
    tokens = repeated_tokens(model, n, seed)
    length = (tokens.shape[1] - 1) // 2
    second = torch.arange(length + 1, 2 * length + 1)  # query positions in the second half
    first = torch.arange(2, length + 1)  # first-half positions with a real previous token
    scores = {key: torch.zeros(model.n_layers, model.n_heads)
              for key in ("duplicate", "induction", "previous")}
    for layer in range(model.n_layers):
        pattern = model.attention_patterns(tokens, layer).float().cpu()  # [b, h, q, k]
        scores["duplicate"][layer] = pattern[:, :, second, second - length].mean(dim=(0, 2))
        # the token after the first copy; the last repeated token's has none
        inducing = second[:-1]
        scores["induction"][layer] = pattern[:, :, inducing, inducing - length + 1].mean(dim=(0, 2))
        scores["previous"][layer] = pattern[:, :, first, first - 1].mean(dim=(0, 2))
    return scores


# ----- copying scores ------------------------------------------------------------------------


@torch.no_grad()
def copying_scores(model: Subject, names: list[int], top_k: int = TOP_K
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``[layers, heads]`` (copying, negative copying): the fraction of ``names`` (token ids)
    that each head's OV circuit, applied to the name's residual stream after layer 0 (a
    name alone after BOS), puts among the ``top_k`` most raised (lowered) tokens. None when
    the model has no processed GPT-2 weights to read."""
    from inversionview.probed.processed import ProcessedGPT2

    processed = model.processed
    if not isinstance(processed, ProcessedGPT2):
        return None
    tokens = torch.tensor([[model.task.vocab.bos_id, name] for name in names], device=model.device)
    resid = processed.run(tokens, [Site(0, "resid_post")])[Site(0, "resid_post")][:, 1]
    normalized = processed.normalize(resid)  # [n, d]
    ids = torch.tensor(names, device=model.device)
    copying = torch.zeros(model.n_layers, model.n_heads)
    negative = torch.zeros(model.n_layers, model.n_heads)
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            out = normalized @ processed.W_V[layer, head] @ processed.W_O[layer, head]
            logits = processed.normalize(out) @ processed.W_U  # [n, vocab]
            top = logits.topk(top_k, dim=1).indices
            bottom = (-logits).topk(top_k, dim=1).indices
            copying[layer, head] = (top == ids[:, None]).any(dim=1).float().mean().cpu()
            negative[layer, head] = (bottom == ids[:, None]).any(dim=1).float().mean().cpu()
    return copying, negative


# ----- patching --------------------------------------------------------------------------------


PATCHING_METHODS = ("activation", "attribution")


@torch.no_grad()
def patching_effects(model: Subject, prompts, seed: int, method: str = "activation",
                     direct: bool = False) -> dict[str, Any]:
    """``[layers, heads]`` change of the mean LD when each head's output (at every position,
    and at END only) comes from the ABC run, as a fraction of (ABC LD - original LD).
    ``direct`` adds ``direct_end``: the END change sent only along the path from the head to
    the logits (``direct_effects``).

    ``activation``: one patched run per head and place (exact; 2 x heads runs).
    ``attribution``: the first-order estimate from one backward pass of the original runs
    (Nanda's attribution patching: (ABC output - original output) . dLD/d output); for
    GPT-2-sized models on a CPU, where exact patching of every head is slow."""
    if method not in PATCHING_METHODS:
        raise TaskInputError(f"unknown patching method {method!r}; use one of "
                             f"{', '.join(PATCHING_METHODS)}")
    task = model.task
    generator = random.Random(seed)
    contrasts = [task.prompts.abc(p, generator.randrange(2**62)) for p in prompts]
    original = model.tokens([p.text for p in prompts])
    corrupted = model.tokens([c.text for c in contrasts])
    if original.shape != corrupted.shape:  # the third name is one token: same length
        raise TaskInputError("an ABC contrast does not line up with its prompt")
    rows = torch.arange(len(prompts), device=original.device)
    ends = torch.tensor([p.positions["END"] for p in prompts], device=original.device)
    io = torch.tensor([task.prompts.name_ids[p.io] for p in prompts], device=original.device)
    s = torch.tensor([task.prompts.name_ids[p.s] for p in prompts], device=original.device)

    def difference(logits: torch.Tensor) -> float:
        at = logits[rows, ends]
        return float((at[rows, io] - at[rows, s]).mean())

    clean = difference(model.processed_logits(original))
    abc = difference(model.processed_logits(corrupted))
    full = abc - clean
    heads = [Site(layer, "head", head) for layer in range(model.n_layers)
             for head in range(model.n_heads)]
    values = model.run_sites(corrupted, heads)
    every = torch.ones(original.shape, dtype=torch.bool, device=original.device)
    at_end = torch.zeros_like(every)
    at_end[rows, ends] = True
    effects = {"patch_all": torch.zeros(model.n_layers, model.n_heads),
               "patch_end": torch.zeros(model.n_layers, model.n_heads)}
    clean_values = None
    if direct:
        final = Site(model.n_layers - 1, "resid_post")
        clean_values = model.run_sites(original, [*heads, final])
        effects["direct_end"] = torch.zeros(model.n_layers, model.n_heads)
        for site in heads:
            change = (values[site] - clean_values[site])[rows, ends]  # [n, d]
            logits = model.direct_logits(change, clean_values[final][rows, ends]).float()
            effect = float((logits[rows, io] - logits[rows, s]).mean())
            effects["direct_end"][site.layer, site.head] = effect / full if full else 0.0
    if method == "attribution":
        gradients = _head_gradients(model, original, rows, ends, io, s)
        if clean_values is None:
            clean_values = model.run_sites(original, heads)
        for site in heads:
            change = (values[site] - clean_values[site]) * gradients[site]  # [b, p, d]
            for key, where in (("patch_all", every), ("patch_end", at_end)):
                estimate = float((change * where[..., None]).sum())  # dLD is of the mean
                effects[key][site.layer, site.head] = estimate / full if full else 0.0
        return {"clean_logit_difference": clean, "abc_logit_difference": abc,
                "method": method, **effects}
    patched_difference = _patched_difference(model, original, rows, ends, io, s, difference)
    for site in heads:
        for key, where in (("patch_all", every), ("patch_end", at_end)):
            patched = patched_difference(site, where, values[site])
            effects[key][site.layer, site.head] = (patched - clean) / full if full else 0.0
    return {"clean_logit_difference": clean, "abc_logit_difference": abc, "method": method,
            **effects}


def _head_gradients(model: Subject, original, rows, ends, io, s) -> dict[Site, torch.Tensor]:
    """d(mean LD)/d(each head's output) ``[b, p, d]`` on the original runs (processed GPT-2;
    ``ProcessedGPT2.head_output_gradients``: every layer's head outputs are leaves)."""
    from inversionview.probed.processed import ProcessedGPT2

    processed = model.processed
    if not isinstance(processed, ProcessedGPT2):
        raise TaskInputError("attribution patching reads gradients of the processed GPT-2 "
                             "forward; use --patching activation for this architecture")
    direction = processed.W_U.T[io] - processed.W_U.T[s]  # [n, d]

    def mean_difference(final: torch.Tensor) -> torch.Tensor:  # final: [b, p, d] normalised
        at_end = final[rows, ends]
        return ((at_end * direction).sum(dim=1) + processed.b_U[io] - processed.b_U[s]).mean()

    grads = processed.head_output_gradients(model.model_ids(original), mean_difference)
    return {Site(layer, "head", head): grads[layer][:, :, head]
            for layer in range(model.n_layers) for head in range(model.n_heads)}


def _patched_difference(model: Subject, original, rows, ends, io, s, difference):
    """``(site, where, values) -> mean LD`` of the original runs with one head patched. On
    the processed GPT-2 path it starts at the head's layer from the unpatched residual stream
    and reads only the two answers' logits at END (GPT-2 small: 50,257 logits at every
    position of every run would dominate); elsewhere it runs the whole patched model."""
    from inversionview.probed.processed import ProcessedGPT2

    processed = model.processed
    if not isinstance(processed, ProcessedGPT2):
        return lambda site, where, values: difference(
            model.run_patched(original, {site: (where, values)}))
    ids = model.model_ids(original)
    starts = processed.run(ids, [Site(layer, "resid_pre") for layer in range(model.n_layers)])
    direction = processed.W_U.T[io] - processed.W_U.T[s]  # [n, d]
    bias = processed.b_U[io] - processed.b_U[s]

    def patched(site: Site, where, values) -> float:
        final = processed.final_normalized(ids, {site: (where, values)},
                                           start=(site.layer, starts[Site(site.layer, "resid_pre")]))
        return float(((final[rows, ends] * direction).sum(dim=1) + bias).mean())

    return patched


def direct_effects(model: Subject, n: int = 200, seed: int = 0, split: str = "all"
                   ) -> dict[str, Any]:
    """``[layers, heads]`` fractions of the ABC effect on the mean LD at END, per head: ``total``
    (the head's output at END from the ABC run, everything downstream recomputed; the
    ``patch_end`` score) and ``direct`` (the same change sent only along the path from the head
    to the logits: through the unembedding with the final norm's scale of the original run,
    the rest of the model left as it was; path patching with the logits as the receiver).
    A head whose direct share is about its total writes to the logits itself; one whose total
    is far from its direct share acts through the heads and MLPs after it."""
    prompts = _ioi_task(model).prompts.prompts(n, seed, split)
    effects = patching_effects(model, prompts, seed, direct=True)
    full = effects["abc_logit_difference"] - effects["clean_logit_difference"]
    return {"n": n, "seed": seed, "abc_effect": full, "total": effects["patch_end"],
            "direct": effects["direct_end"]}


# ----- together ----------------------------------------------------------------------------------


def head_scores(model: Subject, n: int = 200, seed: int = 0, split: str = "all",
                patching: str = "activation") -> dict[str, Any]:
    """Every head's ``HeadScore`` on ``n`` prompts (and ``n`` repeated runs), seeded;
    ``patching``: activation (exact) or attribution (``patching_effects``)."""
    task = _ioi_task(model)
    prompts = task.prompts.prompts(n, seed, split)
    attention = _ioi_attention(model, prompts)
    repeats = _repeat_scores(model, n, seed)
    copying = copying_scores(model, sorted(task.prompts.name_ids.values()))
    patching = patching_effects(model, prompts, seed, patching)
    heads = []
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            value = {key: float(table[layer, head])
                     for table_set in (attention, repeats) for key, table in table_set.items()}
            heads.append(HeadScore(
                layer, head, **value,
                copying=None if copying is None else float(copying[0][layer, head]),
                negative_copying=None if copying is None else float(copying[1][layer, head]),
                patch_all=float(patching["patch_all"][layer, head]),
                patch_end=float(patching["patch_end"][layer, head])))
    return {"n": n, "seed": seed, "split": split, "patching": patching["method"],
            "clean_logit_difference": patching["clean_logit_difference"],
            "abc_logit_difference": patching["abc_logit_difference"], "heads": heads}


def classify(heads: list[HeadScore], rules: dict = ROLE_RULES) -> dict[str, list[str]]:
    """Head names per role: a head takes every role whose every rule it passes."""
    def passes(head: HeadScore, rule: dict[str, tuple[str, float]]) -> bool:
        for score, (compare, threshold) in rule.items():
            value = getattr(head, score)
            if value is None or not (value >= threshold if compare == ">=" else value <= threshold):
                return False
        return True

    return {role: [h.name for h in heads if passes(h, rule)] for role, rule in rules.items()}


__all__ = ["HeadScore", "ROLE_RULES", "classify", "copying_scores",
           "direct_effects", "evaluate_ioi", "head_scores", "patching_effects", "repeated_tokens"]
