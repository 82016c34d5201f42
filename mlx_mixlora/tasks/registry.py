"""Look up tasks by name; register user tasks from a yaml file.

A user task yaml names its fields, template, target, metric and either a label
map (label tasks) or none (text tasks, ROUGE-L), plus optional hub dataset:

    name: topic
    fields: [text]
    template: "Text: {text}\\nTopic:"
    target: label
    labels: {0: World, 1: Sports}
    metric: accuracy
    hub: {path: ag_news, splits: {test: test}}
    phrasings:                      # optional: other wordings (train adapters and gates)
      - "Which topic is this? {text}"
    heldout_phrasings:              # optional: wordings kept for evaluation only
      - "{text}\nWhat is this about?"
"""

from __future__ import annotations

from pathlib import Path

from ..adapter_format import validate_name
from ..errors import MixloraError
from ..io import read_yaml
from ..validate import mapping
from .builtin import BUILTIN_TASKS
from .spec import HubSource, Task, label_key

_REGISTRY: dict[str, Task] = {t.name: t for t in BUILTIN_TASKS}
_YAML_KEYS = {
    "name",
    "fields",
    "template",
    "target",
    "metric",
    "labels",
    "hub",
    "synthetic",
    "max_new_tokens",
    "description",
    "phrasings",
    "heldout_phrasings",
}


def list_tasks() -> list[str]:
    return list(_REGISTRY)


def get_task(name: str) -> Task:
    if name not in _REGISTRY:
        raise MixloraError(
            f"unknown task {name!r}; known: {', '.join(_REGISTRY)} (or register a yaml)"
        )
    return _REGISTRY[name]


def register_task(task: Task, replace: bool = False) -> Task:
    validate_name(task.name, what="task name")
    if task.name in _REGISTRY and not replace:
        raise MixloraError(f"task {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def task_from_dict(d: dict, source: str = "task spec") -> Task:
    """Build a Task from a plain dict (parsed yaml), with one-line errors."""
    mapping(d, source, _YAML_KEYS, required=("name", "fields", "template", "target"))
    fields = d["fields"]
    if isinstance(fields, str):
        fields = [fields]
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields) or not fields:
        raise MixloraError(f"{source}: fields must be a non-empty list of field names")
    labels = d.get("labels")
    if labels is not None:
        if not isinstance(labels, dict) or not labels:
            raise MixloraError(
                f"{source}: labels must be a non-empty mapping raw value -> label text"
            )
        labels = {label_key(k): str(v) for k, v in labels.items()}
    hub = d.get("hub")
    if hub is not None:
        if not isinstance(hub, dict) or "path" not in hub:
            raise MixloraError(f"{source}: hub must be a mapping with a 'path'")
        hub = HubSource(str(hub["path"]), hub.get("name"), dict(hub.get("splits") or {}))
    phrasings = {k: _text_list(d.get(k), k, source) for k in ("phrasings", "heldout_phrasings")}
    metric = d.get("metric", "accuracy" if labels else "rouge_l")
    try:
        return Task(
            name=validate_name(str(d["name"]), what="task name"),
            fields=tuple(fields),
            template=str(d["template"]),
            target=str(d["target"]),
            metric=metric,
            labels=labels,
            hub=hub,
            synthetic=d.get("synthetic"),
            max_new_tokens=int(d.get("max_new_tokens", 8 if labels else 48)),
            description=str(d.get("description", "")),
            **phrasings,
        )
    except (TypeError, ValueError) as e:
        raise MixloraError(f"{source}: malformed value: {e}") from None


def _text_list(value, key: str, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise MixloraError(f"{source}: {key} must be a list of non-empty prompt texts")
    return tuple(value)


def load_task_yaml(path: str | Path, register: bool = True, replace: bool = False) -> Task:
    """Read a user task from yaml (safe loader) and register it."""
    task = task_from_dict(read_yaml(path, what="task file"), source=str(path))
    return register_task(task, replace=replace) if register else task


def resolve_task(name_or_path: str) -> Task:
    """A registered task name, or a path to a task yaml (registered on first use)."""
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]
    if name_or_path.endswith((".yaml", ".yml")):
        task = load_task_yaml(name_or_path, register=False)
        return _REGISTRY.get(task.name) or register_task(task)
    return get_task(name_or_path)
