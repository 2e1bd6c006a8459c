"""The LF-VILA authors' pre-processed JSON Lines (their fine-tuning release) -> corpus samples.

Reads the files of ``lfvila_jsonl.files`` (path -> split), whose shape ``lfvila_jsonl.task``
names: ``retrieval`` ``{clip_id, text}`` (a string or a list of sentences); ``how2qa``
``{clip_id, span, text_q, text_a, text_s, answer_idx}``; ``violin`` ``{clip_id, text_q, text_s,
answer}``; ``anet-qa`` ``{video_name, question, answer (class index)}``, with the optional answer
vocabulary ``lfvila_jsonl.answers`` (copied to ``answers.json``; without it the classes are
named by index).

Produces one sample per valid line, ``video`` ``<video_root>/<clip_id|video_name><video_ext>``
(the whole file is the clip), untimed segments (retrieval: one per sentence; QA: the question
or statement), and the task fields of docs/data-formats.md §1. Fields, ids, rejection reasons
and config keys: docs/data-formats.md §11.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from ...config import check
from ...errors import ConfigError, DataError
from ..corpus import SPLITS, Rejections, Sample, Segment
from . import absolute, iter_jsonl, join, load_json, safe_name, shuffle_candidates, video_root
from .anetqa import ANSWERS_FILE, write_answers
from .how2qa import NUM_CANDIDATES, subtitle

log = logging.getLogger(__name__)

SOURCE = "lfvila-jsonl"
KEY = "lfvila_jsonl"  # the config field: a field name cannot hold the hyphen
TASKS = ("retrieval", "how2qa", "violin", "anet-qa")
_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".jsonl", ".json")


@dataclass
class LfvilaJsonlConfig:
    task: str = ""  # retrieval | how2qa | violin | anet-qa (required)
    files: dict[str, str] = field(default_factory=dict)  # JSON Lines path (or URL) -> corpus split
    video_root: str = ""  # directory or fsspec URL holding <clip_id><video_ext>
    video_ext: str = ".mp4"
    answers: str = ""  # anet-qa: the authors' answer vocabulary (JSON list); "" = unknown

    def __post_init__(self) -> None:
        self.video_root, self.answers = absolute(self.video_root), absolute(self.answers)
        self.files = {absolute(path): split for path, split in self.files.items()}
        check(self.task == "" or self.task in TASKS, f"{KEY}.task", f"expected one of {list(TASKS)}, got {self.task!r}")
        check(self.video_ext == "" or self.video_ext.startswith("."), f"{KEY}.video_ext", f"must start with '.', got {self.video_ext!r}")
        check(not self.answers or self.task == "anet-qa", f"{KEY}.answers", f"only anet-qa has an answer vocabulary, task is {self.task!r}")
        for path, split in self.files.items():
            check(split in SPLITS, f"{KEY}.files", f"{path}: expected one of {list(SPLITS)}, got {split!r}")


Config = LfvilaJsonlConfig


def _require(cfg: LfvilaJsonlConfig) -> None:
    if not cfg.task:
        raise ConfigError(f"config key '{KEY}.task' is required for --source {SOURCE}: one of {', '.join(TASKS)}")
    if not cfg.files:
        raise ConfigError(f"config key '{KEY}.files' is required for --source {SOURCE} (a mapping path -> split)")


def raw_inputs(cfg: LfvilaJsonlConfig) -> list[str]:
    _require(cfg)
    return [*cfg.files] + ([cfg.answers] if cfg.answers else [])


def read(cfg: LfvilaJsonlConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    """One sample per valid line, files in config order."""
    _require(cfg)
    if not cfg.video_root:
        raise ConfigError(f"config key '{KEY}.video_root' is required for --source {SOURCE}")
    root = video_root(cfg.video_root)
    vocabulary = _load_vocabulary(cfg.answers) if cfg.answers else None
    if vocabulary is not None:
        write_answers(out_dir, vocabulary)
        log.info("lfvila-jsonl: answer vocabulary of %d classes copied to %s", len(vocabulary), ANSWERS_FILE)
    parse: Callable[..., Sample | str] = {"retrieval": _retrieval, "how2qa": _how2qa, "violin": _violin, "anet-qa": _anet_qa}[cfg.task]
    largest = -1
    for path, split in cfg.files.items():
        stem, count = file_stem(path), 0
        for lineno, record in iter_jsonl(path):
            parsed = _record_error(record, cfg.task) or parse(record, f"{stem}-{lineno}", f"{stem}:{lineno}", vocabulary)
            if isinstance(parsed, str):
                rejections.add(parsed, f"{path}:{lineno}")
                continue
            name = record["video_name"] if cfg.task == "anet-qa" else record["clip_id"]
            parsed.video, parsed.split = join(root, f"{name}{cfg.video_ext}"), split
            parsed.origin = f"{path}:{lineno}"
            if cfg.task == "anet-qa":
                largest = max(largest, parsed.task["label"])
            count += 1
            yield parsed
        log.info("lfvila-jsonl: %s -> %d %s %s samples", path, count, split, cfg.task)
    if cfg.task == "anet-qa" and vocabulary is None:
        # Unknown vocabulary: name the classes by index so answers.json still maps every label.
        write_answers(out_dir, [str(i) for i in range(largest + 1)])
        log.info("lfvila-jsonl: answer vocabulary unknown; %s names %d classes by index", ANSWERS_FILE, largest + 1)


def file_stem(path: str) -> str:
    """``train.jsonl.gz`` -> ``train``."""
    name = PurePosixPath(path).name
    while (suffix := PurePosixPath(name).suffix) in _SUFFIXES:
        name = name[: -len(suffix)]
    return name


_REQUIRED = {
    "retrieval": ("clip_id", "text"),
    "how2qa": ("clip_id", "text_q", "text_a", "answer_idx"),
    "violin": ("clip_id", "text_q", "answer"),
    "anet-qa": ("video_name", "question", "answer"),
}


def _record_error(record: Any, task: str) -> str | None:
    if not isinstance(record, dict):
        return "record is not a JSON object"
    for name in _REQUIRED[task]:
        if name not in record:
            return f"missing field '{name}'"
    name_field = "video_name" if task == "anet-qa" else "clip_id"
    if not safe_name(record[name_field]):
        return f"bad {name_field}"
    return None


def _sample(sample_id: str, text: str, task: dict) -> Sample:
    """A sample with one untimed segment; ``read`` fills in its video and split."""
    return Sample(id=sample_id, video="", duration=None, segments=[Segment(None, None, text)], split="", task=task)


def _retrieval(record: dict, sample_id: str, key: str, vocabulary: list[str] | None) -> Sample | str:
    text = record["text"]
    sentences = [text] if isinstance(text, str) else text
    if not isinstance(sentences, list):
        return "text is not a string or a list"
    if not sentences:
        return "empty text list"
    if not all(isinstance(s, str) for s in sentences):
        return "sentence is not a string"
    segments = [Segment(None, None, s.strip()) for s in sentences]
    return Sample(id=record["clip_id"], video="", duration=None, segments=segments, split="")


def _how2qa(record: dict, sample_id: str, key: str, vocabulary: list[str] | None) -> Sample | str:
    question, answers, index = record["text_q"], record["text_a"], record["answer_idx"]
    if not (isinstance(question, str) and question.strip()):
        return "empty question"
    if not (isinstance(answers, list) and len(answers) == NUM_CANDIDATES and all(isinstance(a, str) for a in answers)):
        return f"text_a is not {NUM_CANDIDATES} strings"
    if not all(a.strip() for a in answers):
        return "empty answer"
    if not isinstance(index, int) or isinstance(index, bool):
        return "answer_idx is not an integer"
    if not 0 <= index < NUM_CANDIDATES:
        return "answer_idx out of range"
    span = _span(record.get("span"))
    if isinstance(span, str):
        return span
    subtitles = _subtitles(record)
    if isinstance(subtitles, str):
        return subtitles
    candidates, answer = shuffle_candidates([a.strip() for a in answers], index, key=key)
    question = question.strip()
    task = {"question": question, "candidates": candidates, "answer": answer, "span": span, "subtitles": subtitles}
    return _sample(sample_id, question, task)


def _violin(record: dict, sample_id: str, key: str, vocabulary: list[str] | None) -> Sample | str:
    statement, label = record["text_q"], record["answer"]
    if not (isinstance(statement, str) and statement.strip()):
        return "empty statement"
    if not (isinstance(label, int) and not isinstance(label, bool) and label in (0, 1)):
        return "answer is not 0 or 1"
    subtitles = _subtitles(record)
    if isinstance(subtitles, str):
        return subtitles
    statement = statement.strip()
    return _sample(sample_id, statement, {"statement": statement, "label": label, "subtitles": subtitles})


def _anet_qa(record: dict, sample_id: str, key: str, vocabulary: list[str] | None) -> Sample | str:
    question, label = record["question"], record["answer"]
    if not (isinstance(question, str) and question.strip()):
        return "empty question"
    if not (isinstance(label, int) and not isinstance(label, bool) and label >= 0):
        return "answer is not a class index"
    if vocabulary is not None and label >= len(vocabulary):
        return "answer outside the vocabulary"
    question = question.strip()
    answer = vocabulary[label] if vocabulary is not None else str(label)
    return _sample(sample_id, question, {"question": question, "answer": answer, "label": label})


def _span(value: Any) -> list[float] | None | str:
    """``[start, end]``, ``None`` for the whole clip (NaN, ``[NaN, NaN]``, null, absent), or the
    rejection reason."""
    if value is None or _is_nan(value):
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return "bad span"
    if any(_is_nan(v) for v in value):
        return None
    if not all(math.isfinite(v) for v in value):
        return "bad span"
    if value[1] < value[0]:
        return "span ends before it starts"
    return [float(value[0]), float(value[1])]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _subtitles(record: dict) -> list[dict] | str:
    entries = record.get("text_s", [])
    parsed = [subtitle(entry) for entry in entries] if isinstance(entries, list) else [None]
    if any(entry is None for entry in parsed):
        return "bad text_s"
    return parsed


def _load_vocabulary(path: str) -> list[str]:
    vocabulary = load_json(path)
    if not (isinstance(vocabulary, list) and all(isinstance(a, str) for a in vocabulary)):
        raise DataError(f"{path}: expected a JSON list of answer strings (config key '{KEY}.answers')")
    return vocabulary

