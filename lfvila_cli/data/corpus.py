"""The long-form corpus: one JSON Lines record per sample (the output of ``prepare``).

A *long-form sample* (docs/method.md §1) is one source video cut into ``M`` consecutive segments, each
paired with its sentence(s), in temporal order. Record fields (docs/data-formats.md §1):

* ``id`` (str, unique), ``video`` (path relative to the corpus directory, absolute path or
  fsspec URL), ``duration`` (seconds or null), ``split`` (train/val/test, default train);
* ``segments``: ``[{start, end, text, video?}]`` in time order; ``start``/``end`` both null =
  untimed; a segment's own ``video`` is a separate clip file (times stay on the source timeline);
* task fields, kept verbatim and checked by ``task_error`` where present: ``clip``;
  multiple choice ``question``, ``candidates``, ``answer`` (index), ``span``, ``subtitles``;
  entailment ``statement``, ``label``; open-ended QA ``question``, ``answer`` (string),
  ``label`` (class index, -1 outside the vocabulary); anything else a reader adds.

``validation_error`` is the one rule set ``prepare`` applies to every source; its reasons are
short and countable, counted in ``stats.json`` by ``Rejections`` (corrections a reader makes
go under ``adjusted``). ``write_corpus`` writes ``samples.jsonl`` and returns the ``stats.json``
summary; ``read_corpus`` reads it back, a malformed line being a one-line error naming file
and line.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError

CORPUS_FILE = "samples.jsonl"
STATS_FILE = "stats.json"
SPLITS = ("train", "val", "test")
# Annotated ends may overshoot the known duration by rounding (ActivityNet: end == duration).
DURATION_TOLERANCE = 0.5


@dataclass
class Segment:
    start: float | None  # None (with end None): untimed
    end: float | None
    text: str
    video: str | None = None

    @property
    def timed(self) -> bool:
        return self.start is not None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"start": self.start, "end": self.end, "text": self.text}
        if self.video is not None:
            out["video"] = self.video
        return out


@dataclass
class Sample:
    id: str
    video: str
    duration: float | None
    segments: list[Segment]
    split: str
    task: dict[str, Any] = field(default_factory=dict)
    # Where the reader found it ("<file>#<key>", "<file>:<line>"): named by rejection examples,
    # not written to the corpus.
    origin: str | None = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        """The sample's origin when the reader gave one, else its id."""
        return self.origin or self.id

    @property
    def paragraph(self) -> str:
        return " ".join(seg.text for seg in self.segments)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "id": self.id,
            "video": self.video,
            "duration": self.duration,
            "split": self.split,
            "segments": [seg.to_json() for seg in self.segments],
        }
        out.update(self.task)
        return out

    @classmethod
    def from_json(cls, record: dict) -> "Sample":
        """Parse one corpus record; raises ``ValueError`` with the reason when it is malformed."""
        if not isinstance(record, dict):
            raise ValueError("record is not a JSON object")
        for name in ("id", "video", "segments"):
            if name not in record:
                raise ValueError(f"missing field '{name}'")
        segments = record["segments"]
        if not isinstance(segments, list):
            raise ValueError("'segments' is not a list")
        parsed = []
        for i, seg in enumerate(segments):
            if not isinstance(seg, dict):
                raise ValueError(f"segments[{i}] is not an object")
            for name in ("start", "end", "text"):
                if name not in seg:
                    raise ValueError(f"segments[{i}] missing field '{name}'")
            if seg["start"] is None and seg["end"] is None:
                start = end = None  # untimed
            else:
                start, end = _number(seg["start"], f"segments[{i}].start"), _number(seg["end"], f"segments[{i}].end")
            if not isinstance(seg["text"], str):
                raise ValueError(f"segments[{i}].text is not a string")
            video = seg.get("video")
            if video is not None and not isinstance(video, str):
                raise ValueError(f"segments[{i}].video is not a string")
            parsed.append(Segment(start, end, seg["text"], video))
        duration = record.get("duration")
        if duration is not None:
            duration = _number(duration, "duration")
        task = {k: v for k, v in record.items() if k not in ("id", "video", "duration", "split", "segments")}
        return cls(
            id=str(record["id"]),
            video=str(record["video"]),
            duration=duration,
            segments=parsed,
            split=str(record.get("split", "train")),
            task=task,
        )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{name}' is not a number: {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"'{name}' is not finite")
    return value


def validation_error(sample: Sample, min_segments: int = 1) -> str | None:
    """The reason ``sample`` is invalid, or ``None``. Reasons are short and countable."""
    if not sample.id:
        return "empty id"
    if not sample.video:
        return "empty video path"
    # No file system or URL takes a NUL byte: the cache stage would fail on it instead.
    if "\0" in sample.video or any(seg.video is not None and "\0" in seg.video for seg in sample.segments):
        return "NUL byte in video path"
    if sample.split not in SPLITS:
        return f"unknown split '{sample.split}'"
    if len(sample.segments) < min_segments:
        return f"fewer than {min_segments} segments"
    if sample.duration is not None and sample.duration <= 0:
        return "non-positive duration"
    for seg in sample.segments:
        if not seg.text.strip():
            return "empty text"
        if not seg.timed:
            continue
        if seg.start < 0:
            return "segment starts before 0"
        if seg.end <= seg.start:
            return "segment ends before it starts"
        if sample.duration is not None and seg.video is None and seg.end > sample.duration + DURATION_TOLERANCE:
            return "segment outside the video"
    return task_error(sample)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _interval_error(value: Any, name: str, allow_empty: bool) -> str | None:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
        return f"'{name}' is not a [start, end] pair of numbers"
    if value[0] < 0 or value[1] < value[0] or (not allow_empty and value[1] == value[0]):
        return f"'{name}' is not a valid interval"
    return None


def task_error(sample: Sample) -> str | None:
    """The reason the task fields of ``sample`` are malformed, or ``None`` (see the module docstring)."""
    task = sample.task
    if "clip" in task and (reason := _interval_error(task["clip"], "clip", allow_empty=False)):
        return reason
    for name in ("question", "statement"):
        if name in task and not (isinstance(task[name], str) and task[name].strip()):
            return f"'{name}' is not a non-empty string"
    if "candidates" in task:
        candidates = task["candidates"]
        if not (isinstance(candidates, list) and len(candidates) >= 2 and all(isinstance(c, str) and c.strip() for c in candidates)):
            return "'candidates' is not a list of at least 2 non-empty strings"
        if not (_is_int(task.get("answer")) and 0 <= task["answer"] < len(candidates)):
            return "'answer' is not an index into 'candidates'"
    if task.get("span") is not None and (reason := _interval_error(task["span"], "span", allow_empty=True)):
        return reason
    if "label" in task and not (_is_int(task["label"]) and task["label"] >= -1):
        return "'label' is not a class index (or -1)"
    if "subtitles" in task:
        subtitles = task["subtitles"]
        if not isinstance(subtitles, list):
            return "'subtitles' is not a list"
        for sub in subtitles:
            if not (isinstance(sub, dict) and isinstance(sub.get("text"), str)):
                return "a subtitle is not an object with a 'text' string"
            times = (sub.get("start"), sub.get("end"))
            if times != (None, None) and not all(_is_number(t) for t in times):
                return "a subtitle's start/end are not numbers (or both null)"
    return None


class Tally:
    """Counts records by reason and keeps a few examples of each for ``stats.json``."""

    def __init__(self, examples_per_reason: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._keep = examples_per_reason

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < self._keep:
            kept.append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": self.examples}


class Rejections(Tally):
    """Rejected records by reason; ``adjusted`` counts the records kept after a correction."""

    def __init__(self, examples_per_reason: int = 5) -> None:
        super().__init__(examples_per_reason)
        self.adjusted = Tally(examples_per_reason)

    def first(self) -> str:
        reason = next(iter(self.counts))
        return f"{self.examples[reason][0]}: {reason}"


QA_FIELDS = ("question", "statement", "candidates", "label")
# Pre-training draws windows of this many consecutive segments (loader.clips_per_sample's
# default): a paragraph with fewer is skipped by it (docs/method.md §1).
PRETRAIN_WINDOW = 4


def is_qa_item(sample: Sample) -> bool:
    """A question-answering item (multiple choice, entailment, open-ended), not a paragraph."""
    return any(name in sample.task for name in QA_FIELDS)


def item_kind(sample: Sample) -> str:
    """What a sample is for: ``retrieval`` (a paragraph), ``multiple_choice`` or ``classification``."""
    if "candidates" in sample.task:
        return "multiple_choice"
    return "classification" if is_qa_item(sample) else "retrieval"


def short_paragraphs(samples: Iterable[Sample], window: int = PRETRAIN_WINDOW) -> int:
    """Paragraphs (not QA items) with fewer than ``window`` segments: pre-training skips them."""
    return sum(1 for s in samples if not is_qa_item(s) and len(s.segments) < window)


def corpus_stats(samples: list[Sample], rejections: Rejections) -> dict:
    """The ``stats.json`` summary of a corpus."""

    def summary(values: list[float]) -> dict:
        if not values:
            return {"count": 0}
        ordered = sorted(values)
        return {
            "count": len(values),
            "min": ordered[0],
            "mean": round(sum(values) / len(values), 4),
            "median": ordered[len(ordered) // 2],
            "max": ordered[-1],
        }

    per_split = Counter(s.split for s in samples)
    durations = [s.duration for s in samples if s.duration is not None]
    return {
        "samples": len(samples),
        "splits": {split: per_split.get(split, 0) for split in SPLITS},
        "segments": sum(len(s.segments) for s in samples),
        "sentences_per_paragraph": summary([len(s.segments) for s in samples]),
        "words_per_sentence": summary([len(seg.text.split()) for s in samples for seg in s.segments]),
        "segment_seconds": summary([seg.end - seg.start for s in samples for seg in s.segments if seg.timed]),
        "untimed_segments": sum(1 for s in samples for seg in s.segments if not seg.timed),
        "duration_seconds": {**summary(durations), "total": round(sum(durations), 3)},
        "videos": len({s.video for s in samples}),
        "paragraphs": sum(1 for s in samples if not is_qa_item(s)),
        "kinds": dict(sorted(Counter(item_kind(s) for s in samples).items())),
        "short_paragraphs": {"fewer_than": PRETRAIN_WINDOW, "count": short_paragraphs(samples)},
        "rejected": rejections.to_json(),
        "adjusted": rejections.adjusted.to_json(),
    }


def write_corpus(out_dir: str | Path, samples: Iterable[Sample], rejections: Rejections, name: str = CORPUS_FILE) -> dict:
    """Write ``samples`` as JSON Lines plus ``stats.json``; duplicate ids are rejected."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kept: list[Sample] = []
    seen: set[str] = set()
    with open(out_dir / name, "w", encoding="utf-8") as fh:
        for sample in samples:
            if sample.id in seen:
                rejections.add("duplicate id", sample.where)
                continue
            seen.add(sample.id)
            kept.append(sample)
            fh.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
    return corpus_stats(kept, rejections)


def read_corpus(path: str | Path) -> Iterator[Sample]:
    """Read a corpus JSON Lines file; a malformed line is a one-line error naming file and line."""
    path = Path(path)
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read corpus ({exc.strerror or exc})") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Sample.from_json(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: {exc}") from None


def resolve_video(video: str, base: str | Path) -> str:
    """A corpus video reference as an openable path or URL (relative paths are under ``base``)."""
    if "://" in video or os.path.isabs(video):
        return video
    return str(Path(base) / video)


def read_split(path: str | Path, split: str) -> list[Sample]:
    """The samples of one split of a corpus file, in file order."""
    return [sample for sample in read_corpus(path) if sample.split == split]
