"""Tasks as plugins: add a file with a Task subclass and register it in TASKS."""

from __future__ import annotations

from inversionview.errors import echo
from inversionview.tasks.addition import AdditionTask
from inversionview.tasks.base import Task, TaskInputError, Validity, Vocabulary
from inversionview.tasks.counting import CountingTask

TASKS: dict[str, type[Task]] = {
    CountingTask.name: CountingTask,
    AdditionTask.name: AdditionTask,
}


def get_task(name: str) -> Task:
    """The task called ``name``; raises TaskInputError listing the known tasks."""
    try:
        return TASKS[name]()
    except KeyError:
        raise TaskInputError(
            f"unknown task {echo(name)}; known tasks: {', '.join(sorted(TASKS))}"
        ) from None


__all__ = ["TASKS", "Task", "TaskInputError", "Validity", "Vocabulary", "get_task"]
