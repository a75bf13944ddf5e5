"""What a query, a training run or a case study works on: a probed model read as a task.

The probed model (``ProbedModel``) is weights, a backend, a tokenizer and the sites of its
shape; it carries no task. A ``Subject`` pairs it with the task it is read as (a toy task,
free text over a corpus, a case study's prompts), assembled once by the shells and the
notebook API (``load_probed``, ``build_probed``) and handed to the stages. Reading the model
as another task, or giving free text its corpus, makes a new subject (``with_task``): the
model is never changed in place.

A subject reads activations as its model does (the methods below forward to it), so that a
stage holds one object; what needs both halves lives here: the task's site list, a text's
token ids, one text's attention pattern, and the manifest that names the task on saving.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from inversionview.probed.sites import Site, SiteError
from inversionview.tasks.base import Task

if TYPE_CHECKING:
    from inversionview.probed.model import ProbedModel


@dataclass(frozen=True)
class Subject:
    model: ProbedModel
    task: Task

    def with_task(self, task: Task) -> Subject:
        """The same model read as ``task`` (e.g. free text given its corpus)."""
        return replace(self, task=task)

    # ----- what needs the task --------------------------------------------------------

    @property
    def sites(self) -> list[Site]:
        """The sites a decoder reads, in order (index = site id): a toy task's own list (the
        authors' decoders' order), else every site of the model's shape of the kinds the task
        reads (all by default; IOI: the embeddings, the heads, the MLPs)."""
        if self.task.sites is not None:
            return [self.model.site(name) for name in self.task.sites]
        kinds = self.task.site_kinds
        return [site for site in self.model.sites if kinds is None or site.kind in kinds]

    def tokens(self, texts: str | list[str]) -> torch.Tensor:
        """``[batch, n_ctx]`` right-padded token ids of one or more texts, on the model's device."""
        texts = [texts] if isinstance(texts, str) else texts
        return self.task.encode_batch(texts).to(self.model.device)

    def attention_pattern(self, text: str, layer: int) -> torch.Tensor:
        """``[head, query_pos, key_pos]`` attention weights of every head of ``layer`` for one
        text (its real positions only, BOS included)."""
        if not 0 <= layer < self.model.n_layers:
            raise SiteError(f"layer {layer} does not exist; the model has layers "
                            f"0..{self.model.n_layers - 1}")
        tokens = torch.tensor([self.task.encode(text)], device=self.model.device)
        return self.model.attention_patterns(tokens, layer)[0]

    def save(self, directory: str | Path, manifest: dict[str, Any] | None = None,
             dtype: torch.dtype | None = None) -> Path:
        """The model's files (``ProbedModel.save``), its manifest naming this task."""
        record = {"task": self.task.name, **(manifest or self.model.manifest)}
        return self.model.save(directory, record, dtype)

    # ----- the model's reading API ----------------------------------------------------

    @property
    def hf_model(self):
        return self.model.hf_model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def source(self) -> str:
        return self.model.source

    @property
    def manifest(self) -> dict[str, Any]:
        return self.model.manifest

    @property
    def processing(self) -> str:
        return self.model.processing

    @property
    def config(self):
        return self.model.config

    @property
    def architecture(self) -> str:
        return self.model.architecture

    @property
    def n_layers(self) -> int:
        return self.model.n_layers

    @property
    def n_heads(self) -> int:
        return self.model.n_heads

    @property
    def d_model(self) -> int:
        return self.model.d_model

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def processed(self):
        return self.model.processed

    def site(self, name: str | Site) -> Site:
        return self.model.site(name)

    def site_width(self, site: str | Site) -> int:
        return self.model.site_width(site)

    def refresh(self) -> None:
        self.model.refresh()

    def model_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.model_ids(tokens)

    def activations(self, tokens: torch.Tensor, site: str | Site,
                    positions: torch.Tensor | int | None = None) -> torch.Tensor:
        return self.model.activations(tokens, site, positions)

    def run_sites(self, tokens: torch.Tensor, sites: list[str | Site]) -> dict[Site, torch.Tensor]:
        return self.model.run_sites(tokens, sites)

    def run_patched(self, tokens: torch.Tensor,
                    patches: dict[Site, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return self.model.run_patched(tokens, patches)

    def processed_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.processed_logits(tokens)

    def direct_logits(self, piece: torch.Tensor, final_resid: torch.Tensor) -> torch.Tensor:
        return self.model.direct_logits(piece, final_resid)

    def attention_patterns(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        return self.model.attention_patterns(tokens, layer)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.logits(tokens)

    def hf_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.hf_forward(tokens)

    def bridge(self, dtype: torch.dtype | None = None):
        return self.model.bridge(dtype)

    def weights_hash(self) -> str:
        return self.model.weights_hash()

    def weights(self) -> dict[str, torch.Tensor]:
        return self.model.weights()


__all__ = ["Subject"]
