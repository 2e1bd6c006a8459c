"""Readers of published annotation formats, one module per ``prepare --source``.

Every source module has the same small contract, which the ``prepare`` stage relies on:

* ``Config`` (alias of a typed dataclass such as ``HdvilaConfig``): its fields are the
  ``--set <source>.<field>=...`` keys. Every field has a default and paths default to ``""``,
  because the config is built even when another source is selected; ``read`` says which key
  is missing.
* ``read(cfg, out_dir, rejections) -> Iterator[Sample]``: yields parsed samples. A malformed or
  unreadable *file* raises ``DataError`` naming the file and line; a record that cannot even be
  turned into a ``Sample`` is counted in ``rejections`` with a short, countable reason. Samples
  that parse but break a corpus rule (end before start, text outside the video...) are yielded
  as they are: ``prepare`` applies ``corpus.validation_error`` to every source in one place.
  Each sample's ``origin`` names the file and record it came from, for those rejections'
  examples. A record kept after a correction is counted in ``rejections.adjusted``.
* ``raw_inputs(cfg) -> list[str]``: the annotation files whose bytes key the corpus artifact.

The helpers below read through fsspec, so annotation files and video roots may be local paths
or URLs (``s3://bucket/hdvila``); compressed files (``.gz``, ``.bz2``...) are inferred from the
name. Each reader's accepted fields, rejections and config keys: docs/data-formats.md §2–§12;
the shared rules (errors, paths, times, ``--set`` syntax): docs/data-formats.md §1.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from typing import Any, Iterator

from ...errors import ConfigError, DataError

GLOB_CHARS = "*?["


def is_url(path: str) -> bool:
    return "://" in path


def open_text(path: str):
    """Open an annotation file for reading text; an unreadable path is a one-line ``DataError``."""
    import fsspec

    try:
        return fsspec.open(path, "rt", encoding="utf-8", compression="infer").open()
    except (OSError, ValueError, ImportError) as exc:
        # ImportError: the URL's filesystem package (s3fs, gcsfs...) is not installed.
        raise DataError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def not_utf8(path: str) -> DataError:
    """The error for a file that does not decode as UTF-8, at the line and column of its first bad byte.

    Text is decoded ahead of the lines handed out (8 KiB at a time), so the line being read when
    decoding fails can be hundreds of lines before the bad byte: the file is scanned again, line
    by line in bytes, to find it. Columns count characters from 1, as JSON's own errors do."""
    import fsspec

    try:
        with fsspec.open(path, "rb", compression="infer") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    column = len(raw[: exc.start].decode("utf-8")) + 1
                    return DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})")
    except (OSError, ValueError):
        pass
    return DataError(f"{path}: not UTF-8 text")


def iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for each non-blank line; bad JSON names ``file:line``."""
    fh = open_text(path)
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    # exc.pos, not exc.colno: a truncated line fails on its trailing newline.
                    raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg}, column {exc.pos + 1})") from None
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except OSError as exc:
            raise DataError(f"{path}:{lineno + 1}: read failed ({exc.strerror or exc})") from None


def iter_csv(path: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells)`` for each record of a CSV file (standard quoting, doubled quotes;
    a blank line gives ``[]``), numbered by the record's last line: a quoted field may hold
    newlines.

    Errors name the file and line: a record the csv module refuses (the line it starts on), a
    byte that is not UTF-8, and a file that ends inside a quoted field (the line where that field
    opens). The csv module would take the last as a field cut short -- a truncated download --
    so each record is handed out only once the next one shows it was complete."""
    fh = open_text(path)
    with fh:
        lines = _TakenLines(fh)
        reader = csv.reader(lines)
        done = 0  # the last line of the records read so far
        held = None  # (last line, cells, first line, raw lines) of the record read last
        try:
            for cells in reader:
                if held is not None:
                    yield held[0], held[1]
                held = (reader.line_num, cells, done + 1, lines.take())
                done = reader.line_num
        except csv.Error as exc:
            raise DataError(f"{path}:{done + 1}: malformed CSV ({exc})") from None
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except OSError as exc:
            raise DataError(f"{path}:{done + 1}: read failed ({exc.strerror or exc})") from None
    if held is not None:
        opened = _unclosed_quote("".join(held[3]))
        if opened is not None:
            raise DataError(f"{path}:{held[2] + opened}: the file ends inside a quoted field that opens on this line (truncated?)")
        yield held[0], held[1]


class _TakenLines:
    """The lines of a text file, remembering those handed out since the last ``take``."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self._taken: list[str] = []

    def __iter__(self) -> "_TakenLines":
        return self

    def __next__(self) -> str:
        line = next(self._fh)
        self._taken.append(line)
        return line

    def take(self) -> list[str]:
        taken, self._taken = self._taken, []
        return taken


def _unclosed_quote(record: str) -> int | None:
    """The line (counted from 0 within ``record``) where a quoted field opens that ``record``
    never closes, or ``None``; the csv module's default dialect, not strict."""
    state, opened, line = "start", None, 0
    for ch in record:
        if state == "start":  # at the start of a field: only here does a quote open one
            if ch == '"':
                state, opened = "quoted", line
            elif ch != ",":
                state = "field"
        elif state == "field":
            if ch == ",":
                state = "start"
        elif state == "quoted":
            if ch == '"':
                state = "quote"
        elif state == "quote":  # a quote inside a quoted field: doubled, or the field's end
            state = "quoted" if ch == '"' else "start" if ch == "," else "field"
        line += ch == "\n"
    return opened if state == "quoted" else None


def load_json(path: str) -> Any:
    """A whole-file JSON document; bad JSON and bad bytes name the file, line and column."""
    fh = open_text(path)
    with fh:
        try:
            text = fh.read()
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except OSError as exc:
            raise DataError(f"{path}: read failed ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None


def expand(pattern: str, key: str) -> list[str]:
    """The files named by ``pattern``: one path, or a glob (``hdvila_part*.jsonl``), sorted.

    A glob that matches nothing is a ``DataError`` naming the config ``key``; a plain path is
    returned as it is and checked when it is opened.
    """
    if not any(ch in pattern for ch in GLOB_CHARS):
        return [pattern]
    if is_url(pattern):
        fs, stripped = _filesystem(pattern)
        try:
            matches = [fs.unstrip_protocol(p) for p in sorted(fs.glob(stripped))]
        except OSError as exc:
            raise DataError(f"{pattern}: cannot list ({exc.strerror or exc})") from None
    else:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
    if not matches:
        raise DataError(f"{pattern}: no files match (config key '{key}')")
    return matches


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(os.path.expanduser(path))
    fs, stripped = _filesystem(path)
    try:
        return fs.isfile(stripped)
    except OSError as exc:
        raise DataError(f"{path}: cannot check ({exc.strerror or exc})") from None


def _filesystem(url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise DataError(f"{url}: cannot open this URL ({exc})") from None


def absolute(path: str) -> str:
    """A local path made absolute (``""`` and URLs as given).

    Config paths are normalised when the config is built, so the artifact key and the saved
    config do not depend on the directory the command ran from.
    """
    if not path or is_url(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def video_root(root: str) -> str:
    """A video root as written into the corpus: URLs as given, local paths made absolute.

    The corpus lives in the work directory, so a root relative to the current directory would
    no longer resolve from there.
    """
    return absolute(root).rstrip("/") if is_url(root) else absolute(root)


def join(root: str, *parts: str) -> str:
    """``root/part/...`` with ``/`` for URLs and local paths alike."""
    return "/".join([root.rstrip("/"), *parts])


def parent(path: str) -> str:
    """The directory holding ``path`` (a local path or a URL)."""
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(os.path.expanduser(path)))


def safe_name(name: Any) -> bool:
    """Whether ``name`` can be one component of a video path (no separators, not ``.``/``..``)."""
    return isinstance(name, str) and bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def parse_time(value: Any) -> float:
    """Seconds from a number or a timestamp string; raises ``ValueError`` when unparsable.

    Accepted strings: ``HH:MM:SS.mmm`` (HD-VILA), ``H:MM:SS``, ``MM:SS.mmm`` and plain seconds
    (``"62.5"``). Minutes and seconds below a larger unit must be under 60; negative times are
    rejected.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        parts = value.strip().split(":")
        if len(parts) > 3 or not all(parts):
            raise ValueError(f"not a time: {value!r}")
        *units, last = parts
        if not all(_is_digits(p) for p in units) or not _is_decimal(last):
            raise ValueError(f"not a time: {value!r}")
        if (units and float(last) >= 60) or (len(units) == 2 and int(units[1]) >= 60):
            raise ValueError(f"not a time: {value!r}")
        seconds = float(last)
        for i, unit in enumerate(reversed(units), 1):
            seconds += int(unit) * 60**i
    else:
        raise ValueError(f"not a time: {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a time: {value!r}")
    return seconds


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _is_decimal(text: str) -> bool:
    whole, _, frac = text.partition(".")
    return _is_digits(whole) and (frac == "" or _is_digits(frac))


# --- sources whose splits are separate annotation files (<stem>.json per split) --------------


def require(cfg: Any, name: str, source: str) -> None:
    """A one-line error when the config path ``<source>.<name>`` is empty."""
    if not getattr(cfg, name):
        raise ConfigError(f"config key '{source}.{name}' is required for --source {source}")


def check_split_config(source: str, video_ext: str, splits: dict[str, str], example_stem: str) -> None:
    """Config checks shared by such sources: ``video_ext`` and the file-stem -> split table."""
    from ...config import check
    from ..corpus import SPLITS

    check(video_ext == "" or video_ext.startswith("."), f"{source}.video_ext", f"must start with '.', got {video_ext!r}")
    check(bool(splits), f"{source}.splits", "must name at least one annotation file")
    for stem, split in splits.items():
        check(safe_name(stem), f"{source}.splits", f"{stem!r} is not a file stem like '{example_stem}'")
        check(split in SPLITS, f"{source}.splits.{stem}", f"expected one of {list(SPLITS)}, got {split!r}")


def split_files(annotations: str, splits: dict[str, str], source: str) -> list[tuple[str, str, str]]:
    """``(path, file stem, split)`` for each ``<stem>.json`` of ``splits`` found in ``annotations``;
    none found is a one-line error."""
    found = [(join(annotations, f"{stem}.json"), stem, split) for stem, split in splits.items()]
    found = [entry for entry in found if exists(entry[0])]
    if not found:
        names = ", ".join(f"{stem}.json" for stem in splits)
        raise DataError(f"{annotations}: none of {names} found (config key '{source}.annotations')")
    return found


def warn_missing_splits(found: list[tuple[str, str, str]], annotations: str, splits: dict[str, str], source: str) -> None:
    """Warn about mapped files ``split_files`` did not find (a misnamed train file would
    otherwise give a corpus without its train split)."""
    import logging

    absent = sorted(set(splits) - {stem for _, stem, _ in found})
    if absent:
        logging.getLogger(f"lfvila_cli.data.formats.{source}").warning(
            "%s: %s not found in %s; their splits stay empty", source, ", ".join(f"{s}.json" for s in absent), annotations
        )


# --- multiple-choice items ---------------------------------------------------------------------


def shuffle_candidates(candidates: list[str], answer: int, key: str) -> tuple[list[str], int]:
    """``candidates`` in an order drawn from ``key`` alone (sha256-seeded, the same on every
    machine and Python version) and the answer's new index.

    Published files often put the correct answer in a fixed place (How2QA's CSV: always last),
    which a model would learn instead of the task."""
    import hashlib

    import numpy as np

    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    order = np.random.default_rng(seed).permutation(len(candidates)).tolist()
    return [candidates[i] for i in order], order.index(answer)
