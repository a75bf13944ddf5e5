"""The models a server serves: each probed model with its decoder, under a name that is
never a path (a client must not learn where the server's files are).

    loaded = load_model("counting")            # a bundled artifact
    loaded = load_model("/data/authors/addition")   # served as "addition"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from inversionview.artifacts import bundled_model_names, shown_name  # noqa: F401 (re-exported)
from inversionview.decoder.model import Decoder
from inversionview.probed.subject import Subject
from inversionview.web.schemas import ModelInfo


@dataclass
class LoadedModel:
    name: str
    probed: Subject
    decoder: Decoder
    decoder_name: str

    def info(self) -> ModelInfo:
        task = self.probed.task
        site, position = task.default_query
        return ModelInfo(
            name=self.name, task=task.name, source=shown_name(self.probed.source),
            decoder=self.decoder_name,
            n_layers=self.probed.n_layers, n_heads=self.probed.n_heads,
            sites=[s.short for s in self.probed.sites], position_names=list(task.position_names),
            attribute_names=list(task.attribute_names), example=task.example,
            default_site=site, default_position=position,
            vocabulary=task.describe_vocabulary(), max_length=task.n_ctx)


def load_model(model: str, task: str | None = None, decoder: Path | None = None) -> LoadedModel:
    """Load a probed model (``task`` as ``load_probed`` takes it: None infers it) and its
    decoder (``decoder``, or the bundled one trained on its weights)."""
    from inversionview.decoder.store import decoder_for
    from inversionview.probed import load_probed

    probed = load_probed(model, task)
    the_decoder, directory = decoder_for(probed, model, decoder)
    return LoadedModel(shown_name(model), probed, the_decoder, shown_name(str(directory)))


def with_unique_names(models: list[LoadedModel]) -> list[LoadedModel]:
    """Two models with the same name (a directory named like a bundled model) are served as
    NAME and NAME-2."""
    taken: set[str] = set()
    unique = []
    for model in models:
        name, suffix = model.name, 2
        while name in taken:
            name, suffix = f"{model.name}-{suffix}", suffix + 1
        taken.add(name)
        unique.append(model if name == model.name else dataclasses.replace(model, name=name))
    return unique
