"""Condensed Movies (the release's CSV metadata) -> one text segment per clip.

Reads from ``cmd.annotations``: ``descriptions.csv`` (``videoid``, ``description``),
``clips.csv`` (``videoid``, ``imdbid``, ``upload_year``), ``split.csv`` (``imdbid``, ``split``,
by movie), optional ``durations.csv`` (``videoid``, ``duration``) and ``movie_info.csv``
(``imdbid``, ``genres``: Python list literals, parsed with ``ast.literal_eval`` only). A
description shared by several clips is dropped for all of them, as the release's loader does.

Produces one sample per kept description: id ``videoid``, ``video``
``<video_root>/<upload_year>/<videoid><video_ext>`` (layout ``flat``: no year folder), one
segment ``[0, duration]`` (untimed when the duration is unknown), task ``imdbid`` (and
``genres``). Files, rejection reasons and config keys: docs/data-formats.md §7.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from ...config import check
from ...errors import DataError
from ..corpus import SPLITS, Rejections, Sample, Segment
from . import absolute, exists, iter_csv, join, require, safe_name, video_root

log = logging.getLogger(__name__)

SOURCE = "cmd"
CLIPS, DURATIONS, SPLIT, DESCRIPTIONS, MOVIE_INFO = "clips.csv", "durations.csv", "split.csv", "descriptions.csv", "movie_info.csv"
REQUIRED = (DESCRIPTIONS, CLIPS, SPLIT)
OPTIONAL = (DURATIONS, MOVIE_INFO)
# A genre list is a few dozen characters; a longer cell is not worth handing to the parser.
MAX_LITERAL_CHARS = 10_000
_YEAR = re.compile(r"(\d{4})(\.0*)?")


def _default_splits() -> dict[str, str]:
    return {"train": "train", "val": "val", "validate": "val", "valid": "val", "test": "test"}


@dataclass
class CmdConfig:
    annotations: str = ""  # directory (or URL) holding clips.csv, durations.csv, split.csv, descriptions.csv
    video_root: str = ""  # directory or fsspec URL holding the videos
    video_ext: str = ".mkv"  # the release downloader merges to .mkv
    layout: Literal["year", "flat"] = "year"  # year: <root>/<upload_year>/<videoid><ext>; flat: <root>/<videoid><ext>
    splits: dict[str, str] = field(default_factory=_default_splits)  # split.csv value -> corpus split

    def __post_init__(self) -> None:
        self.annotations, self.video_root = absolute(self.annotations), absolute(self.video_root)
        check(self.layout in ("year", "flat"), f"{SOURCE}.layout", f"expected 'year' or 'flat', got {self.layout!r}")
        check(self.video_ext == "" or self.video_ext.startswith("."), f"{SOURCE}.video_ext", f"must start with '.', got {self.video_ext!r}")
        check(bool(self.splits), f"{SOURCE}.splits", "must map at least one split.csv value")
        for value, split in self.splits.items():
            check(split in SPLITS, f"{SOURCE}.splits.{value}", f"expected one of {list(SPLITS)}, got {split!r}")


Config = CmdConfig


def _path(cfg: CmdConfig, name: str) -> str:
    return join(cfg.annotations, name)


def raw_inputs(cfg: CmdConfig) -> list[str]:
    require(cfg, "annotations", SOURCE)
    paths = [_path(cfg, name) for name in REQUIRED]
    for path in paths:
        if not exists(path):
            raise DataError(f"{path}: not found (config key '{SOURCE}.annotations')")
    return paths + [path for path in (_path(cfg, name) for name in OPTIONAL) if exists(path)]


def read(cfg: CmdConfig, out_dir, rejections: Rejections) -> Iterator[Sample]:
    """One sample per clip with a description, in ``descriptions.csv`` order."""
    inputs = raw_inputs(cfg)
    require(cfg, "video_root", SOURCE)
    root = video_root(cfg.video_root)
    clips = _clips(_path(cfg, CLIPS), rejections)
    movie_splits = _movie_splits(_path(cfg, SPLIT), rejections)
    if _path(cfg, DURATIONS) in inputs:
        durations = _durations(_path(cfg, DURATIONS))
    else:
        durations = {}
        log.warning("cmd: %s not found: every clip's duration is unknown (one untimed segment each)", _path(cfg, DURATIONS))
    genres = _genres(_path(cfg, MOVIE_INFO), rejections) if _path(cfg, MOVIE_INFO) in inputs else {}
    count = 0
    for videoid, text, where in _descriptions(_path(cfg, DESCRIPTIONS), rejections):
        reason, clip = _join_error(cfg, videoid, clips, movie_splits, durations)
        if reason is not None:
            rejections.add(reason, where)
            continue
        imdbid, year, split, duration = clip
        name = videoid + cfg.video_ext
        task: dict[str, Any] = {"imdbid": imdbid}
        if imdbid in genres:
            task["genres"] = genres[imdbid]
        count += 1
        yield Sample(
            id=videoid,
            video=join(root, year, name) if cfg.layout == "year" else join(root, name),
            duration=duration,
            segments=[Segment(0.0, duration, text) if duration is not None else Segment(None, None, text)],
            split=split,
            task=task,
            origin=where,
        )
    log.info("cmd: %s -> %d samples", _path(cfg, DESCRIPTIONS), count)


def _join_error(cfg: CmdConfig, videoid: str, clips: dict, movie_splits: dict, durations: dict):
    """``(reason, None)`` when the description cannot become a sample, else
    ``(None, (imdbid, upload_year, split, duration))``."""
    if not safe_name(videoid):
        return "bad videoid", None
    row = clips.get(videoid)
    if row is None:
        return "videoid not in clips.csv", None
    imdbid = (row.get("imdbid") or "").strip()
    if not imdbid:
        return "missing imdbid", None
    year = _year(row.get("upload_year"))
    if cfg.layout == "year" and year is None:
        return "bad upload_year", None
    if imdbid not in movie_splits:
        return "no split for movie", None
    split = cfg.splits.get(movie_splits[imdbid])
    if split is None:
        return "unknown split", None
    duration = durations.get(videoid, "")
    if duration:
        try:
            duration = float(duration)
        except ValueError:
            return "bad duration", None
        if not math.isfinite(duration) or duration <= 0:
            return "bad duration", None
    else:
        duration = None
    return None, (imdbid, year, split, duration)


def _year(value: Any) -> str | None:
    """``"2019"`` from ``"2019"`` or ``"2019.0"`` (pandas writes years as floats); else ``None``."""
    match = _YEAR.fullmatch((value or "").strip())
    return match.group(1) if match else None


# --- CSV files ------------------------------------------------------------------------------


def _rows(path: str, required: tuple[str, ...], any_of: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for each record of a CSV file whose header names every column of
    ``required`` and at least one of ``any_of``."""
    records = iter_csv(path)
    _, header = next(records, (0, []))
    header = [name.strip().lstrip("\ufeff").strip() for name in header]
    for name in required:
        if name not in header:
            raise DataError(f"{path}: missing column '{name}' (header: {','.join(header) or 'empty'})")
    if any_of and not any(name in header for name in any_of):
        raise DataError(f"{path}: missing column '{any_of[-1]}' (header: {','.join(header) or 'empty'})")
    for line, values in records:
        if any(v.strip() for v in values):
            yield line, dict(zip(header, values))


def _clips(path: str, rejections: Rejections) -> dict[str, dict[str, str]]:
    clips: dict[str, dict[str, str]] = {}
    for line, row in _rows(path, ("videoid", "imdbid", "upload_year")):
        videoid = (row.get("videoid") or "").strip()
        if videoid in clips:
            rejections.add("duplicate videoid in clips.csv", f"{path}:{line}")
            continue
        clips[videoid] = row
    return clips


def _movie_splits(path: str, rejections: Rejections) -> dict[str, str]:
    splits: dict[str, str] = {}
    for line, row in _rows(path, ("imdbid", "split")):
        imdbid, split = (row.get("imdbid") or "").strip(), (row.get("split") or "").strip()
        if imdbid in splits and splits[imdbid] != split:
            rejections.add("conflicting split for movie", f"{path}:{line}")
            continue
        splits.setdefault(imdbid, split)
    return splits


def _durations(path: str) -> dict[str, str]:
    # Parsed at the join, so a bad duration is counted once, against the sample it spoils.
    return {(row.get("videoid") or "").strip(): (row.get("duration") or "").strip() for _, row in _rows(path, ("videoid", "duration"))}


def _descriptions(path: str, rejections: Rejections) -> Iterator[tuple[str, str, str]]:
    """``(videoid, text, where)`` for the first description of each clip that is not shared
    with another clip."""
    rows = []
    for line, row in _rows(path, ("videoid", "description")):
        where = f"{path}:{line}"
        videoid, text = (row.get("videoid") or "").strip(), (row.get("description") or "").strip()
        if text:
            rows.append((videoid, text, where))
        else:
            rejections.add("empty description", where)
    clips_of: dict[str, set[str]] = {}
    for videoid, text, _ in rows:
        clips_of.setdefault(text, set()).add(videoid)
    kept: dict[str, str] = {}
    for videoid, text, where in rows:
        if len(clips_of[text]) > 1:
            rejections.add("description shared by several clips", where)
        elif videoid in kept:
            rejections.add("duplicate description" if kept[videoid] == text else "extra description", where)
        else:
            kept[videoid] = text
            yield videoid, text, where


def _genres(path: str, rejections: Rejections) -> dict[str, list[str]]:
    """``imdbid -> genres`` from ``movie_info.csv``; cells parsed by ``ast.literal_eval`` only."""
    genres: dict[str, list[str]] = {}
    for line, row in _rows(path, ("imdbid",), any_of=("genres", "genre")):
        value = _literal_list(row["genres"] if "genres" in row else row.get("genre"))
        if value is None:
            rejections.add("bad genre cell", f"{path}:{line}")
            continue
        genres.setdefault((row.get("imdbid") or "").strip(), value)
    return genres


def _literal_list(cell: str | None) -> list[str] | None:
    """A list of strings from a Python literal cell, or ``None``. ``literal_eval`` builds only
    literals (no names, calls or attribute access), so a malicious cell fails to parse."""
    if not cell or len(cell) > MAX_LITERAL_CHARS:
        return None
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    return None
