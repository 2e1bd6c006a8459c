"""The downstream tasks (docs/method.md §6): what kind each is, which model variant and
pre-training stage it starts from, its paper recipe length and reported figures.

The paper's seven benchmarks:

    retrieval        activitynet, didemo, queryd, cmd: paragraph-to-video retrieval (dual encoder)
    multiple_choice  how2qa: one logit per candidate answer, plus a per-frame span head
    classification   violin (2 labels), anet-qa (the answer vocabulary of the prepared corpus)

and one generic task per kind for corpora of your own (``lfvila prepare --source jsonl``),
whose reports carry no paper figures:

    retrieval        paragraph-to-video retrieval over the corpus' paragraphs
    multiple-choice  items with ``question``, ``candidates`` (any fixed number) and ``answer``
    classification   items with ``question`` or ``statement`` and a class ``label``; the classes
                     are the corpus' ``answers.json`` where it has one, else labels 0..max
"""

from __future__ import annotations

import json
from collections import Counter
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
    num_labels: Optional[int] = None  # classification: fixed, or None = from the corpus (``class_count``)
    num_candidates: Optional[int] = 4  # multiple choice: fixed, or None = from the items (``candidate_count``)
    benchmark: bool = True  # one of the paper's benchmarks (its report names the paper); False = generic


TASKS: dict[str, TaskSpec] = {
    "activitynet": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 35.3, "R@5": 65.4}),
    "didemo": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 35.0, "R@5": 64.5, "R@10": 75.8}),
    "queryd": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 69.7, "R@5": 85.7, "R@10": 90.3}),
    "cmd": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {"R@1": 13.6, "R@5": 32.5, "R@10": 41.8}),
    "how2qa": TaskSpec("multiple_choice", "qa-multichoice", "pretrain2", 30, 6, {}),
    "violin": TaskSpec("classification", "qa-classification", "pretrain2", 100, 4, {}, num_labels=2),
    "anet-qa": TaskSpec("classification", "qa-classification", "pretrain2", 100, 0, {}),
    # Generic tasks for your own corpora: the same models and losses, nothing of a benchmark.
    "retrieval": TaskSpec("retrieval", "retrieval", "pretrain1", 20, 0, {}, benchmark=False),
    "multiple-choice": TaskSpec("multiple_choice", "qa-multichoice", "pretrain2", 30, 0, {}, num_candidates=None, benchmark=False),
    "classification": TaskSpec("classification", "qa-classification", "pretrain2", 100, 0, {}, benchmark=False),
}
BENCHMARKS = tuple(name for name, spec in TASKS.items() if spec.benchmark)


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ConfigError(f"config key 'task': unknown task {task!r}; known: {', '.join(TASKS)}")
    return TASKS[task]


def task_help() -> str:
    """The task names by kind, for ``--help``: ``retrieval (retrieval, activitynet, ...) | ...``."""
    kinds: dict[str, list[str]] = {}
    for name, spec in TASKS.items():
        kinds.setdefault(spec.kind, []).append(name)
    return "; ".join(f"{kind.replace('_', ' ')}: {', '.join(names)}" for kind, names in kinds.items())


def class_count(corpus_path: Path, samples) -> int:
    """The classes of a classification corpus: its ``answers.json`` (anet-qa, or a ``jsonl``
    corpus whose items give answers as text) where it has one, else labels 0..max over ``samples``
    (every split: a class seen only in val still needs its logit)."""
    if (Path(corpus_path).parent / ANSWERS_FILE).is_file():
        return len(read_answers(Path(corpus_path).parent))
    labels = [s.task["label"] for s in samples if isinstance(s.task.get("label"), int)]
    if not labels or max(labels) < 1:
        raise DataError(f"{corpus_path}: classification needs items with a 'label' (class index) of at least two classes, or an {ANSWERS_FILE}")
    return max(labels) + 1


def candidate_count(samples) -> int:
    """The number of candidates a multiple-choice split is trained or scored with: the most
    common count among its items (items with another count are skipped, with that reason)."""
    counts = Counter(len(s.task["candidates"]) for s in samples if isinstance(s.task.get("candidates"), list))
    return counts.most_common(1)[0][0] if counts else 4


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
