"""Task type -> model: which model a request of a kind of work prefers, and which specialties match.

The default table is the network's founding one (debug, analyze, fix, clean, fix_helper, refactor;
anything else is general work, which prefers no model). A router config can replace any entry. The
preferred model is only a preference: when it has no live host the router falls back to the other
approved, hosted models that fit the request, ranked by the host score (router.scoring), and the
response says which model served.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

GENERAL = "general"

DEFAULT_MODELS: Mapping[str, str] = {
    "debug": "starcoder2-15b",  # multi-language debugging
    "analyze": "deepseek-coder-6.7b",  # deep code understanding
    "fix": "codellama-7b",  # proven code generation
    "clean": "mistral-7b",  # fast optimization and cleanup
    "fix_helper": "wizardcoder-13b",  # Python patch merging
    "refactor": "wizardcoder-34b",  # large-scale transformations
}

# A model's on-chain specialties (ModelRegistry tags) that count as a match for a task: the x1.2
# boost of the host score. A task always matches a tag spelled like itself.
DEFAULT_SPECIALTIES: Mapping[str, tuple[str, ...]] = {
    "debug": ("debugging", "debug"),
    "analyze": ("analysis", "reasoning", "architecture"),
    "fix": ("fix", "code-generation", "codegen"),
    "clean": ("cleanup", "optimization", "clean"),
    "fix_helper": ("patching", "fix"),
    "refactor": ("refactoring", "refactor"),
}


MAX_TASK_CHARS = 64


class BadTask(ValueError):  # noqa: N818 - named for what the caller sent
    """A task type that is not a short printable name."""


@dataclass(frozen=True)
class TaskTable:
    """Task type -> preferred model name, and task type -> matching specialty tags."""

    models: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    specialties: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SPECIALTIES))

    def tasks(self) -> list[str]:
        """Every task type a request may name (`general` included)."""
        return sorted({*self.models, *self.specialties, GENERAL})

    def check(self, task: str | None) -> str:
        """The task type to route by, lower-cased (None or empty: general). A task the table does
        not name is general work that prefers no model, but still matches specialties spelled
        like it (task `python` boosts models tagged `python`); BadTask for a name that is not text."""
        if not task:
            return GENERAL
        task = task.strip().lower()
        if len(task) > MAX_TASK_CHARS or not task.isprintable():
            raise BadTask(f"task_type must be a printable name of at most {MAX_TASK_CHARS} characters")
        return task or GENERAL

    def preferred(self, task: str) -> str | None:
        """The model name the task prefers, None for general work."""
        return self.models.get(task)

    def matches(self, task: str, specialties: Iterable[str]) -> bool:
        """Whether a model with these on-chain specialties is a specialist for the task."""
        if task == GENERAL:
            return False
        wanted = {task, *self.specialties.get(task, ())}
        return any(tag.strip().lower() in wanted for tag in specialties)

    def with_overrides(self, models: Mapping[str, str]) -> TaskTable:
        """This table with some task -> model entries replaced or added (a router config's)."""
        return TaskTable({**self.models, **{k.lower(): v for k, v in models.items()}}, self.specialties)
