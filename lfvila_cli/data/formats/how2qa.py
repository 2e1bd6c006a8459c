"""How2QA (official release CSV, or the HERO/VALUE JSON Lines form) -> multiple-choice samples.

Reads, by ``how2qa.format``: ``csv`` -- the headerless 7-column files of ``how2qa.splits``
(YouTube id, span ``"[start:end]"``, three wrong answers, question, correct answer last);
``hero`` -- JSON Lines ``{q, a0..a3, answer_idx, qid, ts, vid_name}`` (``how2qa.hero_files``), the
``vid_name -> "<ytid>_<start>_<end>"`` mapping (``hero_mapping``) and optional subtitles
``{vid_name, sub: [{text, start, end}]}`` (``hero_subtitles``).

Produces one sample per question with task ``question``, ``candidates`` (4, in a deterministic
shuffled order), ``answer`` (index), ``span``, ``subtitles``, plus ``clip`` (CSV: a
``clip_seconds`` window centred on the span, our choice, docs/method.md §7) or ``qid`` (HERO), and
one segment holding the question. Fields, rejection reasons and config keys:
docs/data-formats.md §8.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Literal

from ...config import check
from ...errors import DataError
from ..corpus import SPLITS, Rejections, Sample, Segment
from . import (
    absolute,
    check_split_config,
    exists,
    iter_csv,
    iter_jsonl,
    join,
    load_json,
    require,
    safe_name,
    shuffle_candidates,
    video_root,
)

log = logging.getLogger(__name__)

SOURCE = "how2qa"
NUM_CANDIDATES = 4
CSV_COLUMNS = 7
_NUMBER = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*"
_CSV_SPAN = re.compile(rf"\s*\[{_NUMBER}:{_NUMBER}\]\s*")
_HERO_TS = re.compile(rf"{_NUMBER}-{_NUMBER}")
_SEGMENT_NAME = re.compile(r".+_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)")


# The official repository publishes the val and test files; a train file named like them is read
# when present (its split stays empty, with one warning, when it is not).
PUBLISHED_SPLITS = {"how2QA_train_release": "train", "how2QA_val_release": "val", "how2QA_test_public_release": "test"}


def _default_splits() -> dict[str, str]:
    return dict(PUBLISHED_SPLITS)


@dataclass
class How2qaConfig:
    format: Literal["csv", "hero"] = "csv"
    annotations: str = ""  # csv: directory (or URL) holding how2QA_val_release.csv, how2QA_test_public_release.csv
    splits: dict[str, str] = field(default_factory=_default_splits)  # csv: file stem -> corpus split
    clip_seconds: float = 60.0  # csv: length of the clip window centred on the span
    hero_files: dict[str, str] = field(default_factory=dict)  # hero: JSON Lines path -> corpus split
    hero_mapping: str = ""  # hero: JSON object vid_name -> "<ytid>_<start>_<end>"
    hero_subtitles: str = ""  # hero: optional JSON Lines {vid_name, sub: [{text, start, end}]}
    max_subtitles: int = 6  # hero: subtitles kept per sample, the first in time order
    video_root: str = ""  # directory or fsspec URL holding the videos
    video_ext: str = ".mp4"

    def __post_init__(self) -> None:
        self.annotations, self.video_root = absolute(self.annotations), absolute(self.video_root)
        self.hero_mapping, self.hero_subtitles = absolute(self.hero_mapping), absolute(self.hero_subtitles)
        self.hero_files = {absolute(path): split for path, split in self.hero_files.items()}
        check_split_config(SOURCE, self.video_ext, self.splits, "how2QA_val_release")
        check(self.clip_seconds > 0, f"{SOURCE}.clip_seconds", f"must be positive, got {self.clip_seconds}")
        check(self.max_subtitles >= 0, f"{SOURCE}.max_subtitles", f"must be >= 0, got {self.max_subtitles}")
        for path, split in self.hero_files.items():
            check(split in SPLITS, f"{SOURCE}.hero_files", f"{path}: expected one of {list(SPLITS)}, got {split!r}")


Config = How2qaConfig


def csv_files(cfg: How2qaConfig) -> list[tuple[str, str, str]]:
    """``(path, file stem, split)`` for each mapped ``<stem>.csv`` that exists; none is an error.

    Silent: ``raw_inputs`` calls it for every fingerprint (``lfvila status`` too); ``read`` warns."""
    require(cfg, "annotations", SOURCE)
    found = [(join(cfg.annotations, f"{stem}.csv"), stem, split) for stem, split in cfg.splits.items()]
    found = [entry for entry in found if exists(entry[0])]
    if not found:
        names = ", ".join(f"{stem}.csv" for stem in cfg.splits)
        raise DataError(f"{cfg.annotations}: none of {names} found (config key '{SOURCE}.annotations')")
    return found


def _warn_about_files(cfg: How2qaConfig, found: list[tuple[str, str, str]]) -> None:
    """One warning for mapped files that are missing, one for published files left unmapped."""
    absent = [stem for stem in cfg.splits if stem not in {stem for _, stem, _ in found}]
    if absent:
        log.warning("how2qa: %s not found in %s; their splits stay empty", ", ".join(f"{s}.csv" for s in absent), cfg.annotations)
    unmapped = [stem for stem in PUBLISHED_SPLITS if stem not in cfg.splits and exists(join(cfg.annotations, f"{stem}.csv"))]
    if unmapped:
        log.warning(
            "how2qa: %s in %s is in no split and is not read (config key '%s.splits')",
            ", ".join(f"{s}.csv" for s in unmapped), cfg.annotations, SOURCE,
        )


def _require_hero(cfg: How2qaConfig) -> None:
    require(cfg, "hero_files", SOURCE)
    require(cfg, "hero_mapping", SOURCE)


def raw_inputs(cfg: How2qaConfig) -> list[str]:
    if cfg.format == "csv":
        return [path for path, _, _ in csv_files(cfg)]
    _require_hero(cfg)
    return [*cfg.hero_files, cfg.hero_mapping] + ([cfg.hero_subtitles] if cfg.hero_subtitles else [])


def read(cfg: How2qaConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    """One sample per question, files in config order, questions in file order."""
    if cfg.format == "csv":
        files = csv_files(cfg)
        _warn_about_files(cfg, files)
        require(cfg, "video_root", SOURCE)
        for path, stem, split in files:
            yield from _read_csv(cfg, path, stem, split, rejections)
    else:
        _require_hero(cfg)
        require(cfg, "video_root", SOURCE)
        mapping = _load_mapping(cfg.hero_mapping)
        subtitles = _load_subtitles(cfg.hero_subtitles, rejections) if cfg.hero_subtitles else {}
        for path, split in cfg.hero_files.items():
            yield from _read_hero(cfg, path, split, mapping, subtitles, rejections)


# --- the official CSV --------------------------------------------------------------------------


def _read_csv(cfg: How2qaConfig, path: str, stem: str, split: str, rejections: Rejections) -> Iterator[Sample]:
    root = video_root(cfg.video_root)
    count = 0
    for index, (_, row) in enumerate(iter_csv(path)):
        if not row:
            continue  # a blank line
        where = f"{path}#{index}"
        reason = _row_error(row)
        if reason is not None:
            rejections.add(reason, where)
            continue
        ytid, span_text, *wrong, question, correct = (cell.strip() for cell in row)
        start, end = _span(span_text)  # checked by _row_error
        candidates, answer = shuffle_candidates([*wrong, correct], NUM_CANDIDATES - 1, key=f"{stem}:{index}")
        clip = clip_window(start, end, cfg.clip_seconds)
        count += 1
        yield Sample(
            id=f"{stem}-{index}",
            video=join(root, f"{ytid}{cfg.video_ext}"),
            duration=None,
            segments=[Segment(clip[0], clip[1], question)],
            split=split,
            task={"clip": list(clip), "question": question, "candidates": candidates, "answer": answer, "span": [start, end], "subtitles": []},
            origin=where,
        )
    log.info("how2qa: %s -> %d %s samples", path, count, split)


def _row_error(row: list[str]) -> str | None:
    if len(row) != CSV_COLUMNS:
        return f"expected {CSV_COLUMNS} columns"
    if not safe_name(row[0].strip()):
        return "bad video id"
    span = _span(row[1])
    if span is None:
        return "bad span"
    if span[1] < span[0]:
        return "span ends before it starts"
    if not row[5].strip():
        return "empty question"
    if not all(cell.strip() for cell in (*row[2:5], row[6])):
        return "empty answer"
    return None


def _span(text: str) -> tuple[float, float] | None:
    match = _CSV_SPAN.fullmatch(text)
    return (float(match[1]), float(match[2])) if match else None


def clip_window(start: float, end: float, seconds: float) -> tuple[float, float]:
    """A window of ``seconds`` (or the span's length if longer) centred on ``[start, end]``,
    shifted right to start at 0 when it would start before; times rounded to the millisecond
    (the centre of ``[151.3, 164.37]`` minus 30 s is ``127.83500000000001`` in floats)."""
    length = max(seconds, end - start)
    clip_start = max(0.0, (start + end) / 2 - length / 2)
    return round(clip_start, 3), round(clip_start + length, 3)


# --- the HERO/VALUE JSON Lines form ------------------------------------------------------------


def _read_hero(
    cfg: How2qaConfig, path: str, split: str, mapping: dict, subtitles: dict[str, list[dict]], rejections: Rejections
) -> Iterator[Sample]:
    root = video_root(cfg.video_root)
    count = 0
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        reason = _hero_error(record, mapping)
        if reason is not None:
            rejections.add(reason, where)
            continue
        name = mapping[str(record["vid_name"])]
        qid = record["qid"]
        candidates, answer = shuffle_candidates([record[f"a{i}"].strip() for i in range(NUM_CANDIDATES)], record["answer_idx"], key=str(qid))
        question = record["q"].strip()
        length = segment_length(name)
        segment = Segment(0.0, length, question) if length is not None else Segment(None, None, question)
        count += 1
        yield Sample(
            id=str(qid),
            video=join(root, f"{name}{cfg.video_ext}"),
            duration=None,
            segments=[segment],
            split=split,
            task={
                "question": question,
                "candidates": candidates,
                "answer": answer,
                "span": list(_ts(record["ts"])),
                "subtitles": subtitles.get(str(record["vid_name"]), [])[: cfg.max_subtitles],
                "qid": qid,
            },
            origin=where,
        )
    log.info("how2qa: %s -> %d %s samples", path, count, split)


def _hero_error(record: Any, mapping: dict) -> str | None:
    if not isinstance(record, dict):
        return "record is not a JSON object"
    fields = ("q", *(f"a{i}" for i in range(NUM_CANDIDATES)), "answer_idx", "qid", "ts", "vid_name")
    for name in fields:
        if name not in record:
            return f"missing field '{name}'"
    if not (isinstance(record["q"], str) and record["q"].strip()):
        return "empty question"
    if not all(isinstance(record[f"a{i}"], str) and record[f"a{i}"].strip() for i in range(NUM_CANDIDATES)):
        return "empty answer"
    index = record["answer_idx"]
    if not isinstance(index, int) or isinstance(index, bool):
        return "answer_idx is not an integer"
    if not 0 <= index < NUM_CANDIDATES:
        return "answer_idx out of range"
    if not (isinstance(record["qid"], (str, int)) and not isinstance(record["qid"], bool) and str(record["qid"])):
        return "bad qid"
    ts = _ts(record["ts"])
    if ts is None:
        return "bad ts"
    if ts[1] < ts[0]:
        return "span ends before it starts"
    if str(record["vid_name"]) not in mapping:
        return "vid_name not in mapping"
    if not safe_name(mapping[str(record["vid_name"])]):
        return "bad mapped video name"
    return None


def _ts(value: Any) -> tuple[float, float] | None:
    match = _HERO_TS.fullmatch(value) if isinstance(value, str) else None
    return (float(match[1]), float(match[2])) if match else None


def segment_length(name: str) -> float | None:
    """Seconds of a HERO segment file named ``<ytid>_<start>_<end>``, or ``None`` when the name
    does not say."""
    match = _SEGMENT_NAME.fullmatch(PurePosixPath(name).name)
    if not match or float(match[2]) <= float(match[1]):
        return None
    return float(match[2]) - float(match[1])


def _load_mapping(path: str) -> dict:
    mapping = load_json(path)
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a JSON object vid_name -> segment name, got a {type(mapping).__name__}")
    return mapping


def _load_subtitles(path: str, rejections: Rejections) -> dict[str, list[dict]]:
    """``vid_name -> subtitles`` in time order (untimed last); bad lines and entries are counted."""
    by_video: dict[str, list[dict]] = {}
    for lineno, record in iter_jsonl(path):
        subs = record.get("sub") if isinstance(record, dict) else None
        if not (isinstance(subs, list) and "vid_name" in record):
            rejections.add("bad subtitle record", f"{path}:{lineno}")
            continue
        parsed = [subtitle(entry) for entry in subs]
        if any(entry is None for entry in parsed):
            rejections.add("bad subtitle record", f"{path}:{lineno}")
        kept = [entry for entry in parsed if entry is not None]
        kept.sort(key=lambda s: (s["start"] is None, s["start"] or 0.0))
        by_video[str(record["vid_name"])] = kept
    return by_video


def subtitle(entry: Any) -> dict | None:
    """``{start, end, text}`` from a ``{text, start, end}`` entry: times as floats, or both
    ``None`` unless both are finite numbers; ``None`` when there is no ``text`` string."""
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
        return None
    times = (entry.get("start"), entry.get("end"))
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        return {"start": float(times[0]), "end": float(times[1]), "text": entry["text"].strip()}
    return {"start": None, "end": None, "text": entry["text"].strip()}
