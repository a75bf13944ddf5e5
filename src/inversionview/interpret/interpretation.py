"""One site and position described from several queries (``inversionview interpret``, the
notebook's ``InversionView.interpret``): the deterministic summary of their in-ε samples,
the paper's LLM prompt built from the same queries, and, when asked, the LLM's answer
stored beside them (method.md §11).

    interpretation = interpret(subject, decoder, "a1.0", ":", queries=5)
    interpretation.messages        # the prompt; nothing is sent
    interpretation.ask(endpoint)   # the answer, beside the summary
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inversionview.interpret.features import task_features
from inversionview.interpret.llm import Endpoint, LLMError, ask, build_messages
from inversionview.interpret.summary import Cell, cell_from_results, query_texts, summary_config
from inversionview.tasks.base import TaskInputError


@dataclass
class Interpretation:
    site: str
    position: str
    queries: list[str]  # the query inputs, drawn with ``seed``
    seed: int
    summary: Cell  # what their in-ε samples keep, against the samples outside
    messages: list[dict[str, str]]  # the paper's prompt for the same queries
    llm: dict[str, Any] | None = None  # who answered, how (after ``ask``)
    answer: str | None = None
    names: dict[str, str] = field(default_factory=dict)  # model and decoder, as shown

    def ask(self, endpoint: Endpoint) -> str:
        """Send the prompt to ``endpoint`` and keep its answer (an LLMError says why not)."""
        reply = ask(endpoint, self.messages)
        self.llm = {"url": endpoint.url, "model": endpoint.model, "answered_by": reply["model"],
                    "finish_reason": reply["finish_reason"], "usage": reply["usage"]}
        self.answer = reply["answer"]
        return self.answer

    def to_record(self) -> dict[str, Any]:
        """What ``interpret --json`` prints and ``--out`` writes."""
        return {"model": self.names.get("model"), "decoder": self.names.get("decoder"),
                "site": self.site, "position": self.position, "queries": self.queries,
                "seed": self.seed, "summary": self.summary.to_dict(), "messages": self.messages,
                "llm": self.llm, "answer": self.answer}

    def headline(self) -> str:
        """One line: what the in-ε samples keep (in/out)."""
        kept = ", ".join(f"{row.name} {row.inside:.2f}/{row.outside:.2f}"
                         for row in self.summary.kept) or "nothing"
        return (f"{self.site} at {self.position!r}, {len(self.queries)} queries: the in-eps "
                f"samples keep {kept} (in/out)")


def interpret(subject, decoder, site: str, position: str, queries: int = 5, *,
              candidates: int = 256, epsilon: float = 0.1, metric: str = "euclidean",
              seed: int = 0, model_name: str = "", decoder_name: str = "") -> Interpretation:
    """Run ``queries`` queries at ``site`` and ``position`` (seeds ``seed``, ``seed + 1``, ...,
    as ``summarize`` does), summarize what their in-ε samples keep and build the paper's
    prompt from them. A position that no input of the task has is a TaskInputError."""
    from inversionview.preimage.query import run_query

    config = summary_config(candidates, epsilon, metric)
    texts = query_texts(subject.task, position, queries, seed)
    if not texts:
        raise TaskInputError(f"no input of the {subject.task.name} task drawn with seed {seed} "
                             f"has the position {position!r}; give a position the task's inputs "
                             f"have ({', '.join(subject.task.position_names)}, or an index)")
    results = [run_query(subject, decoder, text, site, position, config, seed=seed + number,
                         decoder_name=decoder_name) for number, text in enumerate(texts)]
    cell = cell_from_results(results[0].site, position, results, task_features(subject.task),
                             not subject.task.attribute_names)
    return Interpretation(site=results[0].site, position=position, queries=texts, seed=seed,
                          summary=cell, messages=build_messages(subject.task, results),
                          names={"model": model_name, "decoder": decoder_name})


__all__ = ["Interpretation", "LLMError", "interpret"]
