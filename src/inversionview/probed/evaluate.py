"""Accuracy of a probed model on its task.

An example counts as solved when every prediction the task grades is the argmax of the
model's logits: counting, the digit predicted at ``:``; addition, every answer digit and the
``E``. Computed teacher-forced in one forward pass, this equals greedy exact match: greedy
decoding follows the true answer exactly when each of these argmaxes is right.
"""

from __future__ import annotations

import torch

from inversionview import options
from inversionview.probed.subject import Subject
from inversionview.tasks.base import next_token_targets


@torch.no_grad()
def solved(model: Subject, tokens: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """``[batch]`` bool: whether the model solves each input of ``tokens`` ``[batch, n_ctx]``."""
    task = model.task
    results = []
    for start in range(0, tokens.shape[0], chunk):
        batch = tokens[start:start + chunk].to(model.device)
        predictions = model.logits(batch).argmax(dim=-1)
        graded = task.answer_mask(batch)
        right = (predictions == next_token_targets(batch, task.vocab.pad_id)) | ~graded
        results.append(right.all(dim=1).cpu())
    return torch.cat(results)


def accuracy(model: Subject, n: int = 20_000, seed: int = 0) -> float:
    """Accuracy on ``n`` fresh samples of the task distribution drawn with ``seed``."""
    n, seed = options.EVAL_SAMPLES.check(n), options.SEED.check(seed)
    generator = torch.Generator().manual_seed(seed)
    tokens = model.task.sample_tokens(n, generator)
    return solved(model, tokens).float().mean().item()


@torch.no_grad()
def answer_logits(model: Subject, texts: list[str], batch: int = 128) -> torch.Tensor:
    """``[n, vocab]`` logits after each text's last token (centred when processed)."""
    task = model.task
    rows = []
    for start in range(0, len(texts), batch):
        tokens = model.tokens(texts[start:start + batch])
        ends = task.lengths(tokens.cpu()) - 1
        logits = model.processed_logits(tokens)
        rows.append(logits[torch.arange(len(ends)), ends.to(logits.device)].float().cpu())
    return torch.cat(rows)
