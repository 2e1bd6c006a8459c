"""VIOLIN (video-and-language inference) -> entailment samples, one per statement.

Reads, by ``violin.format``: ``annotation`` -- ``violin_annotation.json``, an object keyed by
clip id ``{file, split (train/validate/test), sub, statement: [[true, false], ...]}``;
``value`` -- the VALUE JSON Lines ``{paired_id, vid_name, statement, answer}`` of
``violin.value_files`` with subtitles ``{vid_name, sub}`` from ``violin.value_subtitles``.
Subtitle entries may be ``[text, start, end]``, ``[text]``, a string or ``{text, start, end}``.

Produces one sample per statement: task ``statement``, ``label`` (1 true, 0 false),
``subtitles`` (``[{start, end, text}]``), no ``clip``, ``duration`` null, one untimed segment
holding the statement; ids ``<clip>-<pair>-true|false`` (annotation) or
``<paired_id>-true|false`` (value). Fields, rejection reasons and config keys:
docs/data-formats.md §9.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterator, Literal

from ...config import check
from ...errors import DataError
from ..corpus import SPLITS, Rejections, Sample, Segment
from . import absolute, exists, is_url, iter_jsonl, join, load_json, parent, parse_time, require, safe_name, video_root

log = logging.getLogger(__name__)

SOURCE = "violin"
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
DEFAULT_EXT = ".mp4"
# A file extension, not a dot inside a clip name ("s01e02.seg_3").
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{2,4}$")


def _default_value_files() -> dict[str, str]:
    return {"violin_train_release.jsonl": "train", "violin_val_release.jsonl": "val", "violin_test_release.jsonl": "test"}


@dataclass
class ViolinConfig:
    annotations: str = ""  # directory (or URL) holding the annotation files
    format: Literal["annotation", "value"] = "annotation"
    annotation_file: str = "violin_annotation.json"  # format annotation
    value_files: dict[str, str] = field(default_factory=_default_value_files)  # format value: JSON Lines file -> split
    value_subtitles: str = "violin_subtitles.jsonl"  # format value: subtitles JSON Lines ("" = none)
    video_root: str = ""  # directory or fsspec URL holding the videos
    video_ext: str = ""  # "" = the name as annotated (.mp4 added when it has none); ".mp4" = stem + this

    def __post_init__(self) -> None:
        self.annotations, self.video_root = absolute(self.annotations), absolute(self.video_root)
        check(self.format in ("annotation", "value"), f"{SOURCE}.format", f"expected 'annotation' or 'value', got {self.format!r}")
        check(self.video_ext == "" or self.video_ext.startswith("."), f"{SOURCE}.video_ext", f"must start with '.', got {self.video_ext!r}")
        check(bool(self.annotation_file), f"{SOURCE}.annotation_file", "must name the annotation file")
        check(bool(self.value_files), f"{SOURCE}.value_files", "must name at least one JSON Lines file")
        for name, split in self.value_files.items():
            check(bool(name), f"{SOURCE}.value_files", "file names must not be empty")
            check(split in SPLITS, f"{SOURCE}.value_files.{name}", f"expected one of {list(SPLITS)}, got {split!r}")


Config = ViolinConfig


def _path(cfg: ViolinConfig, name: str) -> str:
    return name if is_url(name) or name.startswith("/") else join(cfg.annotations, name)


def _value_files(cfg: ViolinConfig) -> list[tuple[str, str]]:
    found = [(_path(cfg, name), split) for name, split in cfg.value_files.items()]
    present = [entry for entry in found if exists(entry[0])]
    if not present:
        raise DataError(f"{cfg.annotations}: none of {', '.join(cfg.value_files)} found (config key '{SOURCE}.value_files')")
    return present


def _subtitles_path(cfg: ViolinConfig) -> str | None:
    """The subtitles file: in ``annotations`` or, where the VALUE download script puts it, in the
    folder above (``ann/violin_subtitles.jsonl`` beside ``ann/violin/violin_train_release.jsonl``)."""
    if not cfg.value_subtitles:
        return None
    path = _path(cfg, cfg.value_subtitles)
    candidates = [path] if path != join(cfg.annotations, cfg.value_subtitles) else [path, join(parent(cfg.annotations), cfg.value_subtitles)]
    found = next((candidate for candidate in candidates if exists(candidate)), None)
    if found is None:
        also = f"; nor is {candidates[1]}" if len(candidates) > 1 else ""
        raise DataError(f"{path}: not found (config key '{SOURCE}.value_subtitles'; \"\" reads no subtitles){also}")
    return found


def raw_inputs(cfg: ViolinConfig) -> list[str]:
    require(cfg, "annotations", SOURCE)
    if cfg.format == "annotation":
        return [_path(cfg, cfg.annotation_file)]
    files, subtitles = _value_files(cfg), _subtitles_path(cfg)
    return [path for path, _ in files] + ([subtitles] if subtitles else [])


def read(cfg: ViolinConfig, out_dir, rejections: Rejections) -> Iterator[Sample]:
    require(cfg, "annotations", SOURCE)
    if cfg.format == "annotation":
        path = _path(cfg, cfg.annotation_file)
        require(cfg, "video_root", SOURCE)
        yield from _read_annotation(path, cfg, video_root(cfg.video_root), rejections)
    else:
        files, subtitles = _value_files(cfg), _subtitles_path(cfg)
        missing = sorted({_path(cfg, name) for name in cfg.value_files} - {path for path, _ in files})
        if missing:
            log.warning("violin: %s not found; their splits stay empty", ", ".join(missing))
        require(cfg, "video_root", SOURCE)
        yield from _read_value(files, subtitles, cfg, video_root(cfg.video_root), rejections)


def _sample(sample_id: str, video: str, split: str, statement: str, label: int, subtitles: list[dict], origin: str) -> Sample:
    return Sample(
        id=sample_id,
        video=video,
        duration=None,
        segments=[Segment(None, None, statement)],
        split=split,
        task={"statement": statement, "label": label, "subtitles": subtitles},
        origin=origin,
    )


def _video(cfg: ViolinConfig, root: str, name: str) -> str:
    if cfg.video_ext:
        name = (name[: -len(PurePosixPath(name).suffix)] if _EXTENSION.search(name) else name) + cfg.video_ext
    elif not _EXTENSION.search(name):
        name += DEFAULT_EXT
    return join(root, name)


# --- violin_annotation.json ------------------------------------------------------------------


def _read_annotation(path: str, cfg: ViolinConfig, root: str, rejections: Rejections) -> Iterator[Sample]:
    """Two samples per well-formed statement pair, clips in file order."""
    clips = load_json(path)
    if not isinstance(clips, dict):
        raise DataError(f"{path}: expected a JSON object keyed by clip id, got a {type(clips).__name__}")
    count = 0
    for clip_id, record in clips.items():
        where = f"{path}#{clip_id}"
        reason = _record_error(clip_id, record)
        subtitles = None if reason else _subtitles(record["sub"])
        if reason is None and subtitles is None:
            reason = "subtitle without text"
        if reason is not None:
            rejections.add(reason, where)
            continue
        video = _video(cfg, root, record["file"].strip())
        split = SPLIT_NAMES[record["split"]]
        for i, pair in enumerate(record["statement"]):
            if not _valid_pair(pair):
                rejections.add("malformed statement pair", f"{where}/{i}")
                continue
            for statement, label, tag in ((pair[0].strip(), 1, "true"), (pair[1].strip(), 0, "false")):
                count += 1
                yield _sample(f"{clip_id}-{i}-{tag}", video, split, statement, label, subtitles, f"{where}/{i}")
    log.info("violin: %s -> %d samples from %d clips", path, count, len(clips))


def _record_error(clip_id: str, record: Any) -> str | None:
    if not isinstance(record, dict):
        return "record is not a JSON object"
    if not safe_name(clip_id):
        return "bad clip id"
    for name in ("file", "split", "sub", "statement"):
        if name not in record:
            return f"missing field '{name}'"
    if not isinstance(record["file"], str) or not safe_name(record["file"].strip()):
        return "bad file name"
    if not isinstance(record["split"], str) or record["split"] not in SPLIT_NAMES:
        return "unknown split"
    if not isinstance(record["sub"], list):
        return "sub is not a list"
    if not isinstance(record["statement"], list):
        return "statement is not a list"
    return None


def _valid_pair(pair: Any) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) and s.strip() for s in pair)


# --- subtitles -------------------------------------------------------------------------------


def _subtitles(entries: list) -> list[dict] | None:
    """``[{start, end, text}]`` from subtitle entries, or ``None`` when one has no text."""
    out = []
    for entry in entries:
        subtitle = _subtitle(entry)
        if subtitle is None:
            return None
        out.append(subtitle)
    return out


def _subtitle(entry: Any) -> dict | None:
    if isinstance(entry, str):
        text, times = entry, ()
    elif isinstance(entry, list) and entry and isinstance(entry[0], str):
        text, times = entry[0], entry[1:]
    elif isinstance(entry, dict) and isinstance(entry.get("text"), str):
        text, times = entry["text"], (entry.get("start"), entry.get("end"))
    else:
        return None
    start = end = None
    if len(times) >= 2:
        try:
            start, end = parse_time(times[0]), parse_time(times[1])
        except ValueError:
            start = end = None
        if start is not None and end < start:
            start = end = None
    return {"start": start, "end": end, "text": text.strip()}


# --- VALUE JSON Lines ------------------------------------------------------------------------


def _read_value(files: list[tuple[str, str]], subtitles_path: str | None, cfg: ViolinConfig, root: str, rejections: Rejections) -> Iterator[Sample]:
    """One sample per statement line, files in ``value_files`` order."""
    subtitles = _value_subtitles(subtitles_path, rejections) if subtitles_path else {}
    for path, split in files:
        count = 0
        for lineno, record in iter_jsonl(path):
            reason = _value_error(record)
            if reason is not None:
                rejections.add(reason, f"{path}:{lineno}")
                continue
            vid_name, answer, paired_id = record["vid_name"].strip(), int(record["answer"]), str(record["paired_id"])
            pair = paired_id if vid_name in paired_id else f"{vid_name}-{paired_id}"
            sample_id = f"{pair}-{'true' if answer else 'false'}"
            count += 1
            video = _video(cfg, root, vid_name)
            yield _sample(sample_id, video, split, record["statement"].strip(), answer, subtitles.get(vid_name, []), f"{path}:{lineno}")
        log.info("violin: %s -> %d %s samples", path, count, split)


def _value_error(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "record is not a JSON object"
    for name in ("paired_id", "vid_name", "statement", "answer"):
        if name not in record:
            return f"missing field '{name}'"
    if not isinstance(record["vid_name"], str) or not safe_name(record["vid_name"].strip()):
        return "bad vid_name"
    if not isinstance(record["statement"], str):
        return "statement is not a string"
    if record["answer"] not in (0, 1) or isinstance(record["answer"], float):
        return "answer is not 0 or 1"
    paired_id = record["paired_id"]
    if isinstance(paired_id, bool) or not isinstance(paired_id, (str, int)) or not safe_name(str(paired_id)):
        return "bad paired_id"
    return None


def _value_subtitles(path: str, rejections: Rejections) -> dict[str, list[dict]]:
    by_video: dict[str, list[dict]] = {}
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict) or not isinstance(record.get("vid_name"), str) or not isinstance(record.get("sub"), list):
            rejections.add("subtitle record needs 'vid_name' and list 'sub'", where)
            continue
        subtitles = _subtitles(record["sub"])
        if subtitles is None:
            rejections.add("subtitle without text", where)
            continue
        vid_name = record["vid_name"].strip()
        if vid_name in by_video:
            rejections.add("duplicate subtitles for video", where)
            continue
        by_video[vid_name] = subtitles
    return by_video
