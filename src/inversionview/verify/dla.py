"""Direct logit attribution of one head: its output at a position read through the unembedding.

The head's result is centred and divided by the final LayerNorm's scale of the same run at
that position (the processed weights fold the LayerNorm's weights into W_U), so the values
are the head's direct contribution to the logits there. The paper's Table 4 shows where DLA
fails: heads that do not write directly to the output.
"""

from __future__ import annotations

from typing import Any

import torch

from inversionview import options
from inversionview.errors import OptionError
from inversionview.probed.subject import Subject
from inversionview.probed.sites import Site, SiteError
from inversionview.verify.patching import Component


@torch.no_grad()
def head_logit_attribution(model: Subject, texts: list[str], component: Component) -> torch.Tensor:
    """``[n, vocab]`` direct logit attribution of a head site at a position of each text."""
    site = component.site
    if site.kind != "head":
        raise SiteError(f"DLA reads one head's output; {site.short} is not a head (use aL.H)")
    task = model.task
    tokens = model.tokens(texts)
    at = torch.tensor([task.resolve_position(t, component.position) for t in texts])
    last = Site(model.n_layers - 1, "resid_post")
    found = model.run_sites(tokens, [site, last])
    rows = torch.arange(len(texts))
    return logit_attribution(model, found[site][rows, at], found[last][rows, at])


def logit_attribution(model: Subject, piece: torch.Tensor, final_resid: torch.Tensor
                      ) -> torch.Tensor:
    """``[n, vocab]``: the direct effect on the logits of ``piece`` ``[n, d_model]``, one
    summand of the final residual stream ``final_resid`` ``[n, d_model]`` (whose LayerNorm
    scale it shares). The pieces of a residual stream sum, with b_U, to the logits."""
    return model.direct_logits(piece, final_resid)


def _check_k(k: int, vocabulary_size: int) -> None:
    options.TOP_K.check(k)
    if k > vocabulary_size:
        raise OptionError(f"k must be at most the vocabulary size ({vocabulary_size}); got {k}")


def top_tokens(model: Subject, text: str, component: Component, k: int = 5
               ) -> dict[str, list[tuple[str, float]]]:
    """The ``k`` tokens the head promotes most and suppresses most at the position."""
    vocab = model.task.vocab
    _check_k(k, vocab.size)
    attribution = head_logit_attribution(model, [text], component)[0]
    up, down = attribution.topk(k), (-attribution).topk(k)
    return {"promoted": [(vocab.tokens[i], round(v, 4)) for v, i in zip(up.values.tolist(), up.indices.tolist())],
            "suppressed": [(vocab.tokens[i], round(-v, 4)) for v, i in zip(down.values.tolist(), down.indices.tolist())]}


def expected_token_rates(model: Subject, texts: list[str], component: Component,
                         expected: list[str], k: int = 3) -> dict[str, Any]:
    """Table 4 style: how often the ``expected`` token of each text (e.g. its answer digit)
    is among the head's top ``k`` promoted, and among its top ``k`` suppressed, tokens."""
    _check_k(k, model.task.vocab.size)
    attribution = head_logit_attribution(model, texts, component)
    ids = torch.tensor([model.task.vocab.id_of(token) for token in expected])
    promoted = (attribution.topk(k).indices == ids[:, None]).any(dim=1)
    suppressed = ((-attribution).topk(k).indices == ids[:, None]).any(dim=1)
    first = attribution.argmax(dim=1) == ids
    return {"component": component.name, "k": k, "n": len(texts),
            "top_k_promoted_rate": round(promoted.float().mean().item(), 4),
            "top_k_suppressed_rate": round(suppressed.float().mean().item(), 4),
            "most_promoted_rate": round(first.float().mean().item(), 4)}


def sampled_expected_rates(model: Subject, component: Component, n: int, k: int = 3,
                           target: str | None = None, seed: int = 0) -> dict[str, Any]:
    """``expected_token_rates`` on ``n`` inputs of the task drawn with ``seed``, the expected
    token of each being its ``target`` answer token (default: the task's first)."""
    task = model.task
    texts = task.sample(n, seed=seed)
    the_target = target or task.targets[0]
    expected = [text[task.target_index(text, the_target)] for text in texts]
    return {**expected_token_rates(model, texts, component, expected, k), "target": the_target}
