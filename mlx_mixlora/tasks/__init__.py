"""Tasks: registry, data sources (hub, local files, synthetic) and metrics."""

from .builtin import BUILTIN_TASKS
from .phrasing import PROMPT_STYLES, check_style, phrased_examples
from .registry import (
    get_task,
    list_tasks,
    load_task_yaml,
    register_task,
    resolve_task,
    task_from_dict,
)
from .sources import SPLITS, hash_split, load_rows, read_table
from .spec import HubSource, Task, label_key


def load_examples(
    task: Task | str,
    source: str,
    split: str,
    n: int | None = None,
    seed: int = 0,
    prompts: str = "template",
) -> list[dict]:
    """`{"prompt", "completion"}` pairs for training or evaluation, prompts in style `prompts`."""
    task = resolve_task(task) if isinstance(task, str) else task
    check_style(prompts, task)
    return phrased_examples(task, load_rows(task, source, split, n=n, seed=seed), prompts, seed)


__all__ = [
    "BUILTIN_TASKS",
    "SPLITS",
    "HubSource",
    "PROMPT_STYLES",
    "Task",
    "get_task",
    "hash_split",
    "label_key",
    "list_tasks",
    "load_examples",
    "load_rows",
    "load_task_yaml",
    "read_table",
    "register_task",
    "resolve_task",
    "task_from_dict",
]
