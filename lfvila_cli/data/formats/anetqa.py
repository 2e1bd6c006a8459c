"""ActivityNet-QA (``train_q.json`` + ``train_a.json``, ``val_*``, ``test_*``) -> open-ended QA samples.

Reads, per prefix of ``anet_qa.splits``, two parallel JSON lists joined on ``question_id``:
questions ``{question, question_id, video_name}`` (``video_name`` without ``v_``) and answers
``{answer, question_id, type?}``. Writes ``out_dir/answers.json``: the ``vocab_size`` (1654) most
frequent normalised train answers, index = class.

Produces one sample per joined question: id ``question_id``, ``video``
``<video_root>/<video_prefix><video_name><video_ext>``, one untimed segment holding the
question, task ``question``, ``answer`` (as annotated), ``label`` (class index, -1 outside the
vocabulary; such items are kept) and ``answer_type``. Fields, rejection reasons and config keys:
docs/data-formats.md §10.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ...config import check
from ...errors import ConfigError, DataError
from ..corpus import Rejections, Sample, Segment
from . import absolute, check_split_config, exists, join, load_json, safe_name, video_root

log = logging.getLogger(__name__)

SOURCE = "anet-qa"
KEY = "anet_qa"  # the config field: a field name cannot hold the hyphen
ANSWERS_FILE = "answers.json"
QUESTION_FIELDS = ("question", "question_id", "video_name")
ANSWER_FIELDS = ("answer", "question_id")


def _default_splits() -> dict[str, str]:
    return {"train": "train", "val": "val", "test": "test"}


@dataclass
class AnetQaConfig:
    annotations: str = ""  # directory (or URL) holding <prefix>_q.json and <prefix>_a.json
    video_root: str = ""  # directory or fsspec URL holding <video_prefix><video_name><video_ext>
    video_ext: str = ".mp4"
    video_prefix: str = "v_"  # video_name carries no "v_"; the ActivityNet files do
    splits: dict[str, str] = field(default_factory=_default_splits)  # file prefix -> corpus split
    vocab_size: int = 1654  # answer classes: the most frequent training answers

    def __post_init__(self) -> None:
        self.annotations, self.video_root = absolute(self.annotations), absolute(self.video_root)
        check_split_config(KEY, self.video_ext, self.splits, "val")
        check(self.vocab_size >= 1, f"{KEY}.vocab_size", f"must be >= 1, got {self.vocab_size}")
        check("/" not in self.video_prefix, f"{KEY}.video_prefix", f"must not contain '/', got {self.video_prefix!r}")


Config = AnetQaConfig


def _require(cfg: AnetQaConfig, name: str) -> None:
    if not getattr(cfg, name):
        raise ConfigError(f"config key '{KEY}.{name}' is required for --source {SOURCE}")


def annotation_pairs(cfg: AnetQaConfig) -> list[tuple[str, str, str, str]]:
    """``(questions path, answers path, prefix, split)`` for each mapped prefix whose files exist.

    A prefix with only one of its two files is an error (its questions would all be "no answer");
    none found is an error; a mapped prefix with neither file is a warning."""
    _require(cfg, "annotations")
    found, absent = [], []
    for prefix, split in cfg.splits.items():
        questions, answers = join(cfg.annotations, f"{prefix}_q.json"), join(cfg.annotations, f"{prefix}_a.json")
        has_q, has_a = exists(questions), exists(answers)
        if has_q and has_a:
            found.append((questions, answers, prefix, split))
        elif has_q or has_a:
            raise DataError(f"{answers if has_q else questions}: not found, but its pair {questions if has_q else answers} is")
        else:
            absent.append(prefix)
    if not found:
        names = ", ".join(f"{p}_q.json + {p}_a.json" for p in cfg.splits)
        raise DataError(f"{cfg.annotations}: none of {names} found (config key '{KEY}.annotations')")
    if absent:
        log.warning("anet-qa: %s not found in %s; their splits stay empty", ", ".join(f"{p}_q.json" for p in absent), cfg.annotations)
    return found


def raw_inputs(cfg: AnetQaConfig) -> list[str]:
    return [path for questions, answers, _, _ in annotation_pairs(cfg) for path in (questions, answers)]


def read(cfg: AnetQaConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    """One sample per joined question, files in ``splits`` order, questions in file order."""
    pairs = annotation_pairs(cfg)
    if not any(split == "train" for *_, split in pairs):
        raise DataError(
            f"{cfg.annotations}: no annotation pair maps to the train split, which defines the answer vocabulary (config key '{KEY}.splits')"
        )
    _require(cfg, "video_root")
    root = video_root(cfg.video_root)
    # The files are small (~32k questions in train): join every split before yielding, because
    # the vocabulary comes from train and labels every split.
    joined = [(prefix, split, _join(questions, answers, rejections)) for questions, answers, prefix, split in pairs]
    vocabulary = answer_vocabulary([a["answer"] for _, split, items in joined if split == "train" for _, a in items], cfg.vocab_size)
    write_answers(out_dir, vocabulary)
    log.info("anet-qa: answer vocabulary of %d classes -> %s", len(vocabulary), ANSWERS_FILE)
    index = {answer: i for i, answer in enumerate(vocabulary)}
    for prefix, split, items in joined:
        outside = 0
        for question, answer in items:
            label = index.get(normalise(answer["answer"]), -1)
            outside += label == -1
            text = question["question"].strip()
            task: dict[str, Any] = {"question": text, "answer": answer["answer"], "label": label}
            if "type" in answer:
                task["answer_type"] = answer["type"]
            yield Sample(
                id=question["question_id"],
                video=join(root, f"{cfg.video_prefix}{question['video_name']}{cfg.video_ext}"),
                duration=None,
                segments=[Segment(None, None, text)],
                split=split,
                task=task,
                origin=f"{join(cfg.annotations, prefix + '_q.json')}#{question['question_id']}",
            )
        log.info("anet-qa: %s -> %d %s samples, %d with answers outside the vocabulary", prefix, len(items), split, outside)


def normalise(answer: str) -> str:
    return answer.strip().lower()


def answer_vocabulary(answers: list[str], size: int) -> list[str]:
    """The ``size`` most frequent normalised answers, ties broken by the answer string."""
    counts = Counter(normalise(a) for a in answers)
    return sorted(counts, key=lambda a: (-counts[a], a))[:size]


def write_answers(out_dir: str | Path, vocabulary: list[str]) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ANSWERS_FILE).write_text(json.dumps(vocabulary, ensure_ascii=False) + "\n", encoding="utf-8")


def _join(questions_path: str, answers_path: str, rejections: Rejections) -> list[tuple[dict, dict]]:
    """``(question, answer)`` records joined on ``question_id``, in the questions file's order."""
    # A question lost to a bad record on either side is counted once, by that record's reason.
    questions, bad_questions = _records(questions_path, "questions", QUESTION_FIELDS, _question_error, rejections)
    answers, bad_answers = _records(answers_path, "answers", ANSWER_FIELDS, _answer_error, rejections)
    for qid, (i, _) in answers.items():
        if qid not in questions and qid not in bad_questions:
            rejections.add("answer without a question", f"{answers_path}#{i}")
    joined = []
    for qid, (i, question) in questions.items():
        if qid not in answers:
            if qid not in bad_answers:
                rejections.add("no answer", f"{questions_path}#{i}")
            continue
        joined.append((question, answers[qid][1]))
    return joined


def _records(path: str, kind: str, fields: tuple[str, ...], error, rejections: Rejections) -> tuple[dict[str, tuple[int, dict]], set[str]]:
    """``question_id -> (list index, record)`` for the valid records of one file, and the
    question ids of its rejected records."""
    records = load_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of {kind}, got a {type(records).__name__}")
    by_id: dict[str, tuple[int, dict]] = {}
    rejected: set[str] = set()
    for i, record in enumerate(records):
        reason = _fields_error(record, fields) or error(record)
        if reason is None and record["question_id"] in by_id:
            reason = "duplicate question_id"
        if reason is not None:
            rejections.add(reason, f"{path}#{i}")
            if isinstance(record, dict) and isinstance(record.get("question_id"), str):
                rejected.add(record["question_id"])
            continue
        by_id[record["question_id"]] = (i, record)
    return by_id, rejected


def _fields_error(record: Any, fields: tuple[str, ...]) -> str | None:
    if not isinstance(record, dict):
        return "record is not a JSON object"
    for name in fields:
        if name not in record:
            return f"missing field '{name}'"
    if not (isinstance(record["question_id"], str) and record["question_id"]):
        return "question_id is not a string"
    return None


def _question_error(record: dict) -> str | None:
    if not isinstance(record["question"], str):
        return "question is not a string"
    if not safe_name(record["video_name"]):
        return "bad video name"
    return None


def _answer_error(record: dict) -> str | None:
    if not isinstance(record["answer"], str):
        return "answer is not a string"
    if "type" in record and not (isinstance(record["type"], int) and not isinstance(record["type"], bool)):
        return "type is not an integer"
    return None
