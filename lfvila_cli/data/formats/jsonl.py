"""Bring your own videos: a corpus JSON Lines file in the ``prepare`` output format itself.

Reads ``jsonl.path``, one record per line as ``Sample.from_json`` reads it::

    {"id": "cooking-01", "video": "videos/cooking-01.mp4", "duration": 95.0, "split": "train",
     "segments": [{"start": 0.0, "end": 12.5, "text": "Chop the onions."}, ...]}

Produces the same samples, with relative ``video`` paths (sample and segments) resolved under
``jsonl.video_root`` (default: the file's directory) and written absolute. A line that is not
JSON fails the run with ``file:line``; a record ``from_json`` refuses is rejected with its
reason, made countable. Details: docs/data-formats.md §12; walk-through: ``examples/custom_dataset``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ...errors import ConfigError, DataError
from ..corpus import Rejections, Sample
from . import absolute, is_url, iter_jsonl, join, parent, video_root
from .anetqa import ANSWERS_FILE, answer_vocabulary, normalise, write_answers

log = logging.getLogger(__name__)

SOURCE = "jsonl"


@dataclass
class JsonlConfig:
    path: str = ""  # the corpus JSON Lines file (path or fsspec URL)
    video_root: str = ""  # base of relative video paths; "" = the directory holding `path`

    def __post_init__(self) -> None:
        self.path, self.video_root = absolute(self.path), absolute(self.video_root)


Config = JsonlConfig


def raw_inputs(cfg: JsonlConfig) -> list[str]:
    _require(cfg)
    return [cfg.path]


def read(cfg: JsonlConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    _require(cfg)
    base = video_root(cfg.video_root) if cfg.video_root else parent(cfg.path)
    classes = _answer_classes(cfg.path, out_dir)
    count = 0
    for lineno, record in iter_jsonl(cfg.path):
        try:
            sample = Sample.from_json(record)
        except ValueError as exc:
            rejections.add(countable_reason(str(exc)), f"{cfg.path}:{lineno}")
            continue
        sample.origin = f"{cfg.path}:{lineno}"
        if _answers_as_text(record):
            sample.task["label"] = classes.get(normalise(record["answer"]), -1)
        sample.video = resolve(sample.video, base)
        for segment in sample.segments:
            if segment.video is not None:
                segment.video = resolve(segment.video, base)
        count += 1
        yield sample
    log.info("jsonl: %s -> %d samples", cfg.path, count)


def _answers_as_text(record) -> bool:
    """A classification item whose class is its answer's text: ``question`` and a string
    ``answer``, no ``candidates`` (multiple choice) and no ``label`` of its own."""
    return (
        isinstance(record, dict) and "question" in record and isinstance(record.get("answer"), str)
        and "candidates" not in record and "label" not in record
    )


def _answer_classes(path: str, out_dir: Path) -> dict[str, int]:
    """For items that give their answer as text: every distinct (normalised) answer of the train
    split is a class, most frequent first, written to ``answers.json`` as anet-qa's vocabulary is;
    an item's ``label`` is its answer's class, -1 outside them (val/test items only)."""
    answers, with_text = [], 0
    for _, record in iter_jsonl(path):
        if _answers_as_text(record):
            with_text += 1
            if record.get("split", "train") == "train":
                answers.append(record["answer"])
    if not with_text:
        return {}
    if not answers:
        raise DataError(f"{path}: {with_text} items give their answer as text, but none is in the train split, whose answers are the classes")
    vocabulary = answer_vocabulary(answers, len(answers))
    write_answers(out_dir, vocabulary)
    log.info("jsonl: %d answer classes from the train items -> %s", len(vocabulary), ANSWERS_FILE)
    return {answer: i for i, answer in enumerate(vocabulary)}


def resolve(video: str, base: str) -> str:
    """A record's video reference as a path or URL that opens from anywhere."""
    if not video or is_url(video) or os.path.isabs(video):
        return video
    return join(base, video)


def countable_reason(message: str) -> str:
    """``"'segments[3].start' is not a number: 'x'"`` -> ``"'segment.start' is not a number"``."""
    message = re.sub(r"segments\[\d+\]", "segment", message)
    return message.split(": ", 1)[0]


def _require(cfg: JsonlConfig) -> None:
    if not cfg.path:
        raise ConfigError(f"config key '{SOURCE}.path' is required for --source {SOURCE}")
