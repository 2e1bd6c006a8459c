"""The frame store: decoded, resized frames of every corpus segment in a Zarr v3 group.

Written by ``lfvila cache`` (``cache.py``), read by training every step. The group lives on
any fsspec URL (a local path, ``file://``, ``memory://``, ``s3://`` ...). Layout
(``layout_version`` 1):

* one *row* per segment (a clip of the corpus, or an equal chunk of a downstream video);
  the rows of a sample are contiguous and in segment order;
* ``frames`` uint8 ``(rows, K, H, W, 3)``, ``times`` float32 ``(rows, K)`` (seconds of each
  frame in its video, NaN while pending), ``status`` uint8 ``(rows,)`` (0 pending, 1 ok,
  2 failed) and ``error`` uint8 ``(rows, 256)`` (the utf-8 failure reason, zero padded).
  Every one of them has one row per chunk, so ranks fill disjoint rows without locks, and a
  row counts only once its ``status`` (written after its frames) says ok;
* the sample index: ``sample_id`` (variable-length utf-8), ``sample_row_start`` int64 and
  ``sample_num_rows`` int32, one entry per sample in corpus order; samples asking for the
  same spans of the same video point at the same rows (each video's frames stored once,
  not once per question). Arrays rather than group
  attributes, because the ids of millions of samples would make the group's ``zarr.json``
  as big as the corpus and be re-read with every attribute access;
* group attributes: ``layout_version``, the cache config that shapes the rows
  (``frames_per_segment``, ``height``, ``width``, ``segment_mode``, ``num_chunks``,
  ``splits``), ``samples``, ``rows``, ``plan_digest`` (the corpus segments the rows stand
  for), ``owner`` (the artifact the store was made for: ``workdir_id``, ``workdir``,
  ``stage``, ``key``; ``--force`` deletes no store of another owner) and ``ready``, written
  with all the others in one write by the writer that created the arrays, after them.

No sharding (concurrent writers to one shard lose data) and no consolidated metadata (it goes
stale while rows are filled).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

LAYOUT_VERSION = 1
PENDING, OK, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", OK: "ok", FAILED: "failed"}
ERROR_BYTES = 256


def open_group(url: str | Path, mode: str):
    """Open the Zarr group at ``url``; ``file://`` URLs get ``auto_mkdir`` (docs/engineering.md §4)."""
    import zarr

    url = str(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("file://"):
        kwargs["storage_options"] = {"auto_mkdir": True}
    try:
        return zarr.open_group(url, mode=mode, **kwargs)
    except FileNotFoundError:
        raise DataError(f"{url}: no frame store here (run `lfvila cache` first)") from None
    except (ValueError, TypeError) as exc:  # e.g. an array, not a group, at that path
        raise DataError(f"{url}: cannot open as a frame store ({exc})") from None
    except OSError as exc:  # e.g. a file where a directory of the path should be
        raise DataError(f"{url}: cannot open as a frame store ({exc.strerror or exc})") from None


def encode_reason(reason: str) -> np.ndarray:
    """A failure reason as ``ERROR_BYTES`` zero-padded utf-8 bytes (cut on a character boundary)."""
    data = reason.encode("utf-8")[:ERROR_BYTES]
    data = data.decode("utf-8", errors="ignore").encode("utf-8")
    out = np.zeros(ERROR_BYTES, dtype=np.uint8)
    out[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out


def decode_reason(row: np.ndarray) -> str:
    return bytes(np.asarray(row, dtype=np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")


class UnknownSampleError(DataError, KeyError):
    """The sample id is not in the store (a ``KeyError`` too, for ``in``-style callers)."""

    __str__ = DataError.__str__


class FrameStore:
    """Read-only view of a frame store: ``store.sample(id) -> (frames, times)``.

    >>> store = FrameStore("lfvila-work/store/cache/<key>/frames.zarr")   # doctest: +SKIP
    >>> frames, times = store.sample("v_0001")                              # doctest: +SKIP
    >>> frames.shape, times.shape                  # (M, K, H, W, 3) uint8, (M, K) float32
    """

    def __init__(self, url: str | Path) -> None:
        self.url = str(url)
        group = open_group(self.url, mode="r")
        attrs = group.attrs.asdict()
        if attrs.get("layout_version") != LAYOUT_VERSION:
            raise DataError(
                f"{self.url}: not a frame store of layout version {LAYOUT_VERSION} "
                f"(found layout_version={attrs.get('layout_version')!r})"
            )
        if not attrs.get("ready"):
            raise DataError(f"{self.url}: frame store was never completely created; run `lfvila cache` again")
        self.attrs = attrs
        self.frames_per_segment = int(attrs["frames_per_segment"])
        self.height, self.width = int(attrs["height"]), int(attrs["width"])
        self.segment_mode = attrs["segment_mode"]
        self._frames, self._times = group["frames"], group["times"]
        self._status, self._error = group["status"], group["error"]
        ids = group["sample_id"][:]
        self._row_start = np.asarray(group["sample_row_start"][:], dtype=np.int64)
        self._num_rows = np.asarray(group["sample_num_rows"][:], dtype=np.int64)
        self._row_owner: np.ndarray | None = None  # row -> first sample using it, built on demand
        self._ids = [str(i) for i in ids]
        self._index = {sample_id: i for i, sample_id in enumerate(self._ids)}
        self.num_rows = int(self._status.shape[0])

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._index

    @property
    def sample_ids(self) -> list[str]:
        return list(self._ids)

    def rows(self, sample_id: str) -> range:
        """The store rows of ``sample_id``, one per segment, in segment order."""
        try:
            i = self._index[sample_id]
        except KeyError:
            raise UnknownSampleError(f"{self.url}: sample {sample_id!r} is not in the frame store") from None
        start = int(self._row_start[i])
        return range(start, start + int(self._num_rows[i]))

    def num_segments(self, sample_id: str) -> int:
        return len(self.rows(sample_id))

    def sample(self, sample_id: str, segments: slice | None = None, check_status: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(M, K, H, W, 3)`` uint8 and times ``(M, K)`` float32 of one sample.

        ``segments`` picks consecutive segments (e.g. ``slice(s, s + 4)`` for the 4-clip window
        of docs/method.md §1) so only those rows are read. Any selected row that is not ok is an error
        naming the sample, the segment and the reason: training never silently swaps a failed
        video for another. ``check_status=False`` skips re-reading the rows' status (a reader
        that already checked it, as the training loader does at construction, saves a chunk
        read per row).
        """
        rows = self.rows(sample_id)
        if segments is not None:
            rows = rows[segments]
            if rows.step != 1:
                raise ValueError("segments must be a slice of consecutive segments")
        if len(rows) == 0:
            empty = (0, self.frames_per_segment)
            return np.zeros(empty + (self.height, self.width, 3), np.uint8), np.zeros(empty, np.float32)
        status, frames, times = self._read_rows(slice(rows.start, rows.stop), check_status)
        if check_status and (status != OK).any():
            bad = int(np.flatnonzero(status != OK)[0])
            row = rows.start + bad
            segment = row - int(self._row_start[self._index[sample_id]])
            if status[bad] == FAILED:
                why = f"failed: {decode_reason(self._error[row])}"
            else:
                why = "still pending (the cache stage has not finished)"
            raise DataError(f"{self.url}: sample {sample_id!r} segment {segment} (row {row}) is {why}")
        return frames, times

    def _read_rows(self, rows: slice, with_status: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """Status (unless ``with_status`` is false: None), frames and times of ``rows`` in one
        round trip through Zarr's event loop (separate synchronous reads cost ~2 ms more per
        training sample)."""
        from zarr.core.sync import sync

        arrays = ([self._status] if with_status else []) + [self._frames, self._times]

        async def read():
            return await asyncio.gather(*(a.async_array.getitem(rows) for a in arrays))

        out = [np.asarray(x) for x in sync(read())]
        return (out[0] if with_status else None), out[-2], out[-1]

    def status(self) -> np.ndarray:
        """Status of every row (0 pending, 1 ok, 2 failed); reads one tiny chunk per row."""
        return np.asarray(self._status[:])

    def status_counts(self) -> dict[str, int]:
        counts = np.bincount(self.status(), minlength=3)
        return {name: int(counts[code]) for code, name in STATUS_NAMES.items()}

    def row_sample(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sample index, segment index) of each store row, for the first sample that uses it
        (samples with the same spans of the same video share rows)."""
        if self._row_owner is None:
            # Samples share whole row ranges (same start, same count) and the ranges tile the rows:
            # each row's owner is the first sample with its range's start.
            used = np.flatnonzero(self._num_rows > 0)
            _, first = np.unique(self._row_start[used], return_index=True)
            owners = used[first]
            self._row_owner = np.repeat(owners, self._num_rows[owners])
            if len(self._row_owner) != self.num_rows:
                raise DataError(f"{self.url}: the sample index does not tile the store's {self.num_rows} rows")
        rows = np.asarray(rows, dtype=np.int64)
        sample = self._row_owner[rows]
        return sample, rows - self._row_start[sample]

    def failures(self) -> list[dict]:
        """The failures table: ``{row, sample, segment, reason}`` for every failed row."""
        failed = np.flatnonzero(self.status() == FAILED)
        if failed.size == 0:
            return []
        reasons = np.asarray(self._error.oindex[failed, :])
        samples, segments = self.row_sample(failed)
        return [
            {"row": int(r), "sample": self._ids[s], "segment": int(g), "reason": decode_reason(reason)}
            for r, s, g, reason in zip(failed, samples, segments, reasons)
        ]
