"""Tasks as plugins, in one registry.

``TASKS``: the toy tasks, each one file with a ``Task`` subclass that needs nothing to be
built. ``TEXT_TASKS``: the tasks a language model is read as with its own tokenizer
(``TextTask`` and its subclasses, built from the model's tokenizer and context). Free text
lives here; each case study owns its task (``ioi/task.py``, ``factual/task.py``), named
here by import path so that this layer never imports a case study: a case study's task is
imported when a model is first read as it, as an installed plugin would be.
"""

from __future__ import annotations

import importlib

from inversionview.errors import echo
from inversionview.tasks.addition import AdditionTask
from inversionview.tasks.base import Task, TaskInputError, Validity, Vocabulary
from inversionview.tasks.counting import CountingTask

TASKS: dict[str, type[Task]] = {
    CountingTask.name: CountingTask,
    AdditionTask.name: AdditionTask,
}

#: name -> "module:class" of a TextTask subclass.
TEXT_TASKS: dict[str, str] = {
    "text": "inversionview.tasks.text:TextTask",
    "ioi": "inversionview.ioi.task:IOITask",
    "factual": "inversionview.factual.task:FactualTask",
}


def get_task(name: str) -> Task:
    """The toy task called ``name``; raises TaskInputError listing the known tasks."""
    try:
        return TASKS[name]()
    except KeyError:
        raise TaskInputError(
            f"unknown task {echo(name)}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None


def text_task(name: str) -> type:
    """The ``TextTask`` subclass a language model is read as under ``name``."""
    try:
        module, _, attribute = TEXT_TASKS[name].partition(":")
    except KeyError:
        raise TaskInputError(f"unknown language-model task {echo(name)}; known: "
                             f"{', '.join(TEXT_TASKS)}") from None
    return getattr(importlib.import_module(module), attribute)


__all__ = ["TASKS", "TEXT_TASKS", "Task", "TaskInputError", "Validity", "Vocabulary",
           "get_task", "text_task"]
