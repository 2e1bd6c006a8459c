"""The paper's seven downstream tasks (docs/method.md §6): what kind each is, which model
variant and pre-training stage it starts from, its paper recipe length and reported figures.

    retrieval        activitynet, didemo, queryd, cmd: paragraph-to-video retrieval (dual encoder)
    multiple_choice  how2qa: one logit per candidate answer, plus a per-frame span head
    classification   violin (2 labels), anet-qa (the answer vocabulary of the prepared corpus)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .data.formats.anetqa import ANSWERS_FILE
from .errors import ConfigError, DataError


@dataclass(frozen=True)
class TaskSpec:
    kind: str  # retrieval | multiple_choice | classification
    variant: str  # model preset variant
    pretrained_stage: str  # the pre-training artifact it starts from
    paper_epochs: int
    max_subtitles: int  # subtitle slots after the question / statement
    paper: dict  # LF-VILA's reported figures (docs/method.md §6), for the report
    num_labels: Optional[int] = None  # classification: fixed, or None = from answers.json


TASKS: dict[str, TaskSpec] = {
    "activitynet": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 35.3, "R@5": 65.4}),
    "didemo": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 35.0, "R@5": 64.5, "R@10": 75.8}),
    "queryd": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 69.7, "R@5": 85.7, "R@10": 90.3}),
    "cmd": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 13.6, "R@5": 32.5, "R@10": 41.8}),
    "how2qa": TaskSpec("multiple_choice", "qa-multichoice", "pretrain2", 30, 6, {}),
    "violin": TaskSpec("classification", "qa-classification", "pretrain2", 100, 4, {}, num_labels=2),
    "anet-qa": TaskSpec("classification", "qa-classification", "pretrain2", 100, 0, {}),
}


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ConfigError(f"config key 'task': unknown task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[task]


def read_answers(corpus_dir: Path) -> list[str]:
    """The answer vocabulary of an anet-qa corpus (``answers.json`` in the prepare artifact)."""
    path = Path(corpus_dir) / ANSWERS_FILE
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the answer vocabulary ({exc.strerror or exc}); was the corpus prepared with --source anet-qa?") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg})") from None
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{path}: expected a non-empty JSON list of answers")
    return [str(a) for a in answers]
