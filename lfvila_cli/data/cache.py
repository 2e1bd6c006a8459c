"""Decoding every corpus segment once into the frame store (``framestore.py``; the body of the ``cache`` stage).

For each segment, ``K`` frames evenly spaced over it (docs/method.md §1: the centres of ``K`` equal
sub-intervals), resized to cover ``H × W`` and centre-cropped (``video.VideoDecoder``), go to
one row of the store with their timestamps. Two segmentations:

* ``clips``: the corpus segments (pre-training clips, or the sentences of a downstream video);
  a segment that carries its own ``video`` is spread over that whole file;
* ``chunks``: ``num_chunks`` equal chunks of what each sample covers — its ``clip`` when it
  names one (QA items on part of a long video), else ``[0, duration]``, else the whole file —
  the fine-tuning recipe: 32 frames spread over the whole video (docs/method.md §6).

Robustness and scale:

* **Resumable.** A row's frames and times are written before its ``status`` says ok, a
  failure's reason before ``failed``; a killed run leaves rows pending, never a torn row
  marked ok. Running again on the same store skips finished rows.
* **Rank-parallel without locks.** Rank 0 alone creates the pre-sized arrays; the other ranks
  wait for them. Videos (each opened once for all its segments) go round-robin to ranks, and
  every per-row array has one row per chunk, so ranks write disjoint chunks. Rank 0 then waits
  until no row is pending and reports for the whole store; the other ranks report their part.
* **Broken videos are data, not crashes.** A missing, unreadable or corrupt video marks its
  rows failed with the reason and the run goes on; only when the failed fraction exceeds
  ``max_failure_rate`` does the stage fail, naming the first failing videos. Lightly corrupted
  payloads can decode to garbage without any error (decord/FFmpeg conceal them): no cache can
  tell those apart from real content. Failed rows stay failed on a rerun (``skipped``) unless
  ``retry_failed`` is set: then each rank first turns its failed rows back to pending (status
  first, then the reason cleared) and decodes them again — after fixing or restoring videos.
  Ranks must be launched together for this: rank 0 takes another rank's row that is still
  failed as final.
* **Segments past the end of a video** (annotations often run a few seconds longer than the
  file) are cut at its end; one that starts after the end fails with that reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import check
from ..errors import DataError
from ..progress import ProgressLog, progress_log
from .codecs import CODECS, DEFAULT_QUALITY, is_image_codec
from .corpus import SPLITS, read_corpus, resolve_video
from .formats import absolute
from .framestore import (
    FAILED,
    OK,
    PENDING,
    FramePool,
    RowArrays,
    StoreSpec,
    decode_reason,
    encode_reason,
    open_or_create,
    open_ready,
    reset_rows,
    row_arrays,
    video_digest,
)
from .video import BoundedVideoDecoder, VideoDecoder, VideoError, chunk_span, decode_process

log = logging.getLogger(__name__)

POLICY_FIELDS = ("max_failure_rate", "workers", "retry_failed", "decode_timeout_s")  # change how the run behaves, not what it makes
MAX_LISTED_FAILURES = 1000  # in the returned summary; the store keeps every reason
LOGGED_FAILURES = 10  # logged one by one, then one line per FAILURE_LOG_INTERVAL_S
FAILURE_LOG_INTERVAL_S = 30.0


@dataclass
class CacheConfig:
    frames_per_segment: int = 8
    height: int = 192
    width: int = 320
    segment_mode: Literal["clips", "chunks"] = "clips"
    num_chunks: int = 4
    splits: list[str] = field(default_factory=list)  # empty = all splits
    # How frames are stored (``codecs.py``, docs/data-formats.md §13): jpeg (default), jpegxl,
    # zstd (lossless), raw (lossless, uncompressed). ``quality`` (1-100) is the image codecs'.
    codec: Literal["jpeg", "jpegxl", "zstd", "raw"] = "jpeg"
    quality: int = DEFAULT_QUALITY
    store_url: str = ""  # "" = <artifact dir>/frames.zarr; else any fsspec URL
    max_failure_rate: float = 0.05
    workers: int = 2
    retry_failed: bool = False  # on an existing store, decode this rank's failed rows again
    # Opening a video and decoding each segment run in a child process and fail after this
    # many seconds ("decode timed out after N s"); 0 decodes in this process, unbounded.
    decode_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.store_url = absolute(self.store_url)  # the artifact finds its store from any directory
        check(self.frames_per_segment >= 1, "frames_per_segment", f"must be >= 1, got {self.frames_per_segment}")
        check(self.height >= 1, "height", f"must be >= 1, got {self.height}")
        check(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        check(
            self.segment_mode in ("clips", "chunks"),
            "segment_mode",
            f"expected 'clips' or 'chunks', got {self.segment_mode!r}",
        )
        check(self.num_chunks >= 1, "num_chunks", f"must be >= 1, got {self.num_chunks}")
        check(self.codec in CODECS, "codec", f"expected one of {', '.join(CODECS)}, got {self.codec!r}")
        check(1 <= self.quality <= 100, "quality", f"must be between 1 and 100, got {self.quality}")
        unknown = [s for s in self.splits if s not in SPLITS]
        check(not unknown, "splits", f"unknown split {unknown[0]!r} (known: {', '.join(SPLITS)})" if unknown else "")
        check(len(set(self.splits)) == len(self.splits), "splits", f"duplicate split in {self.splits}")
        check(
            0.0 <= self.max_failure_rate <= 1.0,
            "max_failure_rate",
            f"must be between 0 and 1, got {self.max_failure_rate}",
        )
        check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        check(
            self.decode_timeout_s >= 0 and self.decode_timeout_s != float("inf"),
            "decode_timeout_s",
            f"must be a number of seconds >= 0 (0: decode in this process, unbounded), got {self.decode_timeout_s}",
        )

    def layout(self) -> dict:
        """The part of the config that shapes the store (saved in, and checked against, its attrs)."""
        return {
            "frames_per_segment": self.frames_per_segment,
            "height": self.height,
            "width": self.width,
            "segment_mode": self.segment_mode,
            "num_chunks": self.num_chunks if self.segment_mode == "chunks" else None,
            "splits": sorted(self.splits),
            "codec": self.codec,
            "quality": self.quality if is_image_codec(self.codec) else None,
        }


# --- the plan: which rows stand for which spans of which videos ------------------------------

# A row's span: ("span", start, end) seconds; ("file",) the whole file (a segment with its own
# video); ("chunk", i, n) chunk i of n of a video whose duration the corpus does not know.
Span = tuple


@dataclass
class VideoTask:
    """One video and the store rows it fills; a worker opens the video once for all of them."""

    video: str  # as written in the corpus (for messages)
    source: str  # openable path or URL
    rows: list[int] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)


@dataclass
class CachePlan:
    sample_ids: list[str]
    row_start: np.ndarray  # (samples,) int64
    num_rows: np.ndarray  # (samples,) int32
    tasks: list[VideoTask]  # in order of first appearance in the corpus
    row_task: np.ndarray  # (rows,) int32: index into tasks
    digest: str
    row_sample: np.ndarray  # (rows,) int64: the first sample that uses the row

    @property
    def rows(self) -> int:
        return len(self.row_task)

    def tasks_of_rank(self, rank: int, world_size: int) -> list[VideoTask]:
        return self.tasks[rank::world_size]

    def where(self, row: int) -> tuple[str, int, str]:
        """(sample id, segment index, video) of a row, for the first sample that uses it."""
        sample = int(self.row_sample[row])
        return self.sample_ids[sample], row - int(self.row_start[sample]), self.tasks[self.row_task[row]].video


def chunk_spans(sample, n: int) -> list[Span]:
    """``n`` equal chunks of what the sample covers: its ``clip`` when it names one, else
    ``[0, duration]``, else the whole file (duration unknown)."""
    clip = sample.task.get("clip")
    if clip is not None:
        start, end = float(clip[0]), float(clip[1])
    elif sample.duration:
        start, end = 0.0, float(sample.duration)
    else:
        return [("chunk", i, n) for i in range(n)]
    step = (end - start) / n
    return [("span", start + i * step, start + (i + 1) * step) for i in range(n)]


def plan_rows(corpus_path: Path, cfg: CacheConfig) -> CachePlan:
    """Number the rows (samples in corpus order, segments in order) and group them by video.

    Samples asking for the same spans of the same video share their rows: the questions of one
    video in ActivityNet-QA or the example's How2QA items (a chunks cache of the whole video)
    are decoded and stored once. A sample's rows stay contiguous, so readers are unchanged."""
    base = corpus_path.parent
    splits = set(cfg.splits)
    ids: list[str] = []
    starts: list[int] = []
    counts: list[int] = []
    tasks: list[VideoTask] = []  # in order of first appearance
    task_of_source: dict[str, int] = {}
    row_task: list[int] = []
    row_sample: list[int] = []
    first_rows: dict[tuple, int] = {}  # the spans of a sample (video, span, ...) -> its first row
    digest = hashlib.sha256(json.dumps(cfg.layout(), sort_keys=True).encode())

    for sample in read_corpus(corpus_path):
        if splits and sample.split not in splits:
            continue
        spans: list[tuple[str, Span]] = []
        if cfg.segment_mode == "clips":
            n = len(sample.segments)
            for i, seg in enumerate(sample.segments):
                if seg.video is not None:
                    spans.append((seg.video, ("file",)))
                elif not seg.timed:
                    spans.append((sample.video, ("chunk", i, n)))  # untimed: equal chunks of the video
                else:
                    spans.append((sample.video, ("span", seg.start, seg.end)))
        else:
            spans = [(sample.video, span) for span in chunk_spans(sample, cfg.num_chunks)]
        ids.append(sample.id)
        counts.append(len(spans))
        digest.update(json.dumps([sample.id, spans]).encode() + b"\n")
        resolved = tuple((resolve_video(video, base), span) for video, span in spans)
        if resolved in first_rows:
            starts.append(first_rows[resolved])
            continue
        first_rows[resolved] = len(row_task)
        starts.append(len(row_task))
        for (video, _), (source, span) in zip(spans, resolved):
            index = task_of_source.setdefault(source, len(tasks))
            if index == len(tasks):
                tasks.append(VideoTask(video, source))
            tasks[index].rows.append(len(row_task))
            tasks[index].spans.append(span)
            row_task.append(index)
            row_sample.append(len(ids) - 1)
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise DataError(f"{corpus_path}: sample id {dup!r} appears twice; ids must be unique")
    return CachePlan(
        sample_ids=ids,
        row_start=np.asarray(starts, dtype=np.int64),
        num_rows=np.asarray(counts, dtype=np.int32),
        tasks=tasks,
        row_task=np.asarray(row_task, dtype=np.int32),
        digest=digest.hexdigest(),
        row_sample=np.asarray(row_sample, dtype=np.int64),
    )


# --- the store ---------------------------------------------------------------------------------


def store_spec(cfg: CacheConfig, plan: CachePlan) -> StoreSpec:
    """What the store of this config and plan holds (created and checked by ``framestore``)."""
    return StoreSpec(cfg.layout(), plan.sample_ids, plan.row_start, plan.num_rows, plan.rows, plan.digest)


def plan_store_rows(corpus_path: Path, cfg: CacheConfig) -> CachePlan:
    """``plan_rows``; a corpus with no segments to cache (in ``cfg.splits``) is a ``DataError``."""
    plan = plan_rows(corpus_path, cfg)
    if plan.rows == 0:
        where = f" in splits {cfg.splits}" if cfg.splits else ""
        raise DataError(f"{corpus_path}: no segments to cache{where}")
    return plan


def create_store(corpus_path: Path, cfg: CacheConfig, url: str, owner: dict | None = None, plan: CachePlan | None = None):
    """The store at ``url`` for ``corpus_path`` opened for writing rows, created (as rank 0 does)
    unless it is there already (then checked against the plan)."""
    plan = plan if plan is not None else plan_store_rows(corpus_path, cfg)
    group, resumed = open_or_create(url, store_spec(cfg, plan), owner)
    if resumed:
        log.info("cache: resuming in %s", url)
    return group


def _wait_for_layout(url: str, cfg: CacheConfig, plan: CachePlan, rank: int, timeout_s: float, poll_s: float, owner: dict | None = None):
    spec = store_spec(cfg, plan)
    deadline = time.monotonic() + timeout_s
    while True:
        group = open_ready(url, spec, owner)
        if group is not None:
            return group
        if time.monotonic() > deadline:
            raise DataError(
                f"{url}: rank {rank} waited {timeout_s:.0f}s for rank 0 to create the frame store; "
                "is rank 0 running with the same corpus and store?"
            )
        time.sleep(poll_s)


# --- workers ------------------------------------------------------------------------------------


@dataclass
class _TaskResult:
    task: VideoTask
    before: np.ndarray  # status of its rows when the task started
    after: np.ndarray
    reasons: dict[int, str]  # row -> reason, for rows that failed in this run
    frames: int = 0
    linked: int = 0  # rows taken from the work directory's frame pool instead of decoded


def _write_ok(arrays: RowArrays, row: int, frames: np.ndarray, times: np.ndarray) -> None:
    """Frames and times (concurrently), then ``status = ok``: a row is ok only once its data is in.

    One round trip through Zarr's event loop per row: three separate synchronous writes cost
    ~60% more CPU (measured: 7.5 vs 4.7 ms per 8x192x320 row).
    """
    from zarr.core.sync import sync

    async def write() -> None:
        await asyncio.gather(arrays.frames.async_array.setitem(row, frames), arrays.times.async_array.setitem(row, times))
        await arrays.status.async_array.setitem(row, OK)

    sync(write())


def _write_ok_pooled(arrays: RowArrays, row: int, frames: np.ndarray, times: np.ndarray, pool: FramePool, key: str) -> None:
    """``_write_ok``, then the row's files go to the frame pool for other stores to share."""
    _write_ok(arrays, row, frames, times)
    pool.put(key, row)


def _write_linked(arrays: RowArrays, row: int) -> None:
    """A row whose files were linked from the frame pool is ok (its data is in)."""
    arrays.status[row] = OK


def _write_failed(arrays: RowArrays, row: int, reason: str) -> None:
    arrays.error[row] = encode_reason(reason)
    arrays.status[row] = FAILED


def _resolve_span(span: Span, decoder: VideoDecoder | BoundedVideoDecoder) -> tuple[float | None, float | None]:
    if span[0] == "span":
        return span[1], span[2]
    if span[0] == "file":
        return None, None
    return chunk_span(decoder.info.duration, span[1], span[2])


class _RowWriter:
    """Writes finished rows on threads of its own, so decoding never waits on storage latency.

    Every Zarr call is a round trip through Zarr's event-loop thread; made from the decoding
    threads, those waits left cores idle (2 decode threads on 2 cores: ~180 frames/s, ~220 with
    this writer). A row's writes stay in order inside one job (frames and times, then status);
    at most ``max_pending`` decoded rows wait in memory.
    """

    def __init__(self, threads: int, max_pending: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lfvila-cache-write")
        self._slots = threading.BoundedSemaphore(max_pending)

    def submit(self, fn, *args) -> Future:
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def _pool_keys(task: VideoTask, todo: np.ndarray, pool: FramePool | None) -> dict[int, str]:
    """The frame-pool key of each pending row of a local video (none for URLs or without a pool)."""
    if pool is None or not todo.size or "://" in task.source or not os.path.isfile(task.source):
        return {}
    try:
        digest = video_digest(task.source)
    except OSError:
        return {}  # the decoder reports what is wrong with the file
    return {int(i): FramePool.row_key(digest, task.spans[i]) for i in todo}


def _run_task(task: VideoTask, arrays: RowArrays, cfg: CacheConfig, writer: _RowWriter, pool: FramePool | None, take: bool) -> _TaskResult:
    rows = np.asarray(task.rows, dtype=np.int64)
    before = np.asarray(arrays.status.oindex[rows], dtype=np.uint8)
    result = _TaskResult(task, before, before.copy(), {})
    todo = np.flatnonzero(before == PENDING)
    if todo.size == 0:
        return result
    writes: list[Future] = []
    keys = _pool_keys(task, todo, pool)
    if keys and take:
        linked = [i for i in todo if pool.take(keys[int(i)], int(rows[i]))]  # type: ignore[union-attr]
        for i in linked:
            writes.append(writer.submit(_write_linked, arrays, int(rows[i])))
            result.after[i] = OK
        result.linked = len(linked)
        todo = np.setdiff1d(todo, np.asarray(linked, dtype=todo.dtype))

    def failed(i: int, reason: str) -> None:
        row = int(rows[i])
        writes.append(writer.submit(_write_failed, arrays, row, reason))
        result.after[i], result.reasons[row] = FAILED, reason

    if todo.size:
        with decode_process() if cfg.decode_timeout_s else nullcontext() as process:
            try:
                if process is None:  # the reference path: in this thread, unbounded
                    decoder = VideoDecoder(task.source, cfg.height, cfg.width, num_threads=1)
                else:
                    decoder = BoundedVideoDecoder(task.source, cfg.height, cfg.width, process, cfg.decode_timeout_s)
            except VideoError as exc:
                for i in todo:
                    failed(i, str(exc))
            else:
                with decoder:
                    for i in todo:
                        try:
                            # encoded where decoded: in the decode child (or, unbounded, on this thread)
                            span = _resolve_span(task.spans[i], decoder)
                            stored, times = decoder.span_stored(*span, cfg.frames_per_segment, cfg.codec, cfg.quality)
                        except VideoError as exc:
                            failed(i, str(exc))
                            continue
                        row = int(rows[i])
                        if int(i) in keys:
                            writes.append(writer.submit(_write_ok_pooled, arrays, row, stored, times, pool, keys[int(i)]))
                        else:
                            writes.append(writer.submit(_write_ok, arrays, row, stored, times))
                        result.after[i] = OK
                        result.frames += len(times)
    for future in writes:  # the task is done once its rows are in the store
        future.result()
    return result


class _FailureLog:
    """Logs the first failures in full, then one summary line per interval (open_clip style)."""

    def __init__(self) -> None:
        self.count = 0
        self.unlogged = 0
        self.last = 0.0

    def add(self, video: str, rows: int, reason: str) -> None:
        self.count += 1
        if self.count <= LOGGED_FAILURES:
            log.warning("cache: %s: %d segment(s) failed: %s", video, rows, reason)
            if self.count == LOGGED_FAILURES:
                log.warning("cache: further failures are summarised every %.0fs", FAILURE_LOG_INTERVAL_S)
            self.last = time.monotonic()
            return
        self.unlogged += 1
        if time.monotonic() - self.last >= FAILURE_LOG_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        if self.unlogged:
            log.warning("cache: %d more video(s) with failed segments (%d in all so far)", self.unlogged, self.count)
            self.unlogged = 0
            self.last = time.monotonic()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only when its stream (stderr) is a terminal.
    return tqdm(total=total, unit="seg", desc="cache", dynamic_ncols=True, disable=None if enabled else True)


class _CacheProgress(ProgressLog):
    """Progress as log lines (``progress.ProgressLog``) for runs no one watches on a terminal (a
    scheduler's log, ranks other than 0): done/total, failed, linked, segments/s, frames/s, time left.
    Every rank logs its own: each rank's failures show in its log."""

    def __init__(self, rank: int, world_size: int, total: int, enabled: bool) -> None:
        super().__init__(total, enabled)
        self.rank, self.world_size = rank, world_size
        self.failed = self.linked = self.frames = 0

    def update(self, result: _TaskResult) -> None:
        self.failed += len(result.reasons)
        self.linked += result.linked
        self.frames += result.frames
        if self.advance(len(result.task.rows)):
            self.log(
                "cache: rank %d/%d: %s, %d failed, %d linked, %.1f segments/s, %.0f frames/s, about %s left",
                self.rank, self.world_size, self.counted("segments"), self.failed, self.linked,
                self.rate(), self.per_second(self.frames), self.left(),
            )


def _run_tasks(
    tasks: list[VideoTask], arrays: RowArrays, cfg: CacheConfig, bar, progress: _CacheProgress, pool: FramePool | None, take: bool
) -> tuple[list[_TaskResult], int, float]:
    """Run tasks on ``cfg.workers`` threads (decord and the codecs release the GIL)."""
    results: list[_TaskResult] = []
    failures = _FailureLog()
    started = time.perf_counter()
    queue = iter(tasks)
    running: set[Future] = set()
    writer = _RowWriter(threads=max(2, cfg.workers), max_pending=4 * cfg.workers)
    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="lfvila-cache") as executor:
        try:
            while True:
                # Keep a bounded window in flight: millions of futures would not fit in memory.
                while len(running) < 2 * cfg.workers:
                    task = next(queue, None)
                    if task is None:
                        break
                    running.add(executor.submit(_run_task, task, arrays, cfg, writer, pool, take))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    results.append(result)
                    if result.reasons:
                        failures.add(result.task.video, len(result.reasons), next(iter(result.reasons.values())))
                    progress.update(result)
                    bar.update(len(result.task.rows))
                    elapsed = time.perf_counter() - started
                    bar.set_postfix_str(f"{progress.frames / max(elapsed, 1e-9):.0f} frames/s", refresh=False)
        except BaseException:
            for future in running:
                future.cancel()
            writer.close(cancel=True)
            raise
    writer.close()
    failures.flush()
    return results, progress.frames, time.perf_counter() - started


def wait_for_rows(status, rows: np.ndarray, url: str, timeout_s: float, poll_s: float) -> np.ndarray:
    """Poll the status of ``rows`` until none is pending; re-read only those still pending
    (the frame store's and the feature store's status arrays: ``PENDING`` 0)."""
    final = np.full(len(rows), PENDING, dtype=np.uint8)
    pending = np.arange(len(rows))
    last_progress = time.monotonic()
    sleep = min(0.05, poll_s)
    while pending.size:
        current = np.asarray(status.oindex[rows[pending]], dtype=np.uint8)
        finished = current != PENDING
        final[pending[finished]] = current[finished]
        pending = pending[~finished]
        if finished.any():
            last_progress = time.monotonic()
        if not pending.size:
            break
        waited = time.monotonic() - last_progress
        if waited > timeout_s:
            raise DataError(
                f"{url}: {pending.size} segment(s) of other ranks still pending after {waited:.0f}s without "
                "progress; a rank may have stopped. Run the same command again to resume"
            )
        time.sleep(sleep)
        sleep = min(sleep * 2, poll_s)
    return final


def _reset_failed(arrays: RowArrays, tasks: list[VideoTask]) -> int:
    """Turn the failed rows of ``tasks`` back to pending (``retry_failed``); returns how many."""
    if not tasks:
        return 0
    rows = np.concatenate([np.asarray(t.rows, dtype=np.int64) for t in tasks])
    failed = rows[np.asarray(arrays.status.oindex[rows], dtype=np.uint8) == FAILED]
    if failed.size:
        reset_rows(arrays, failed)
    return int(failed.size)


# --- the stage ----------------------------------------------------------------------------------


def cache_frames(
    corpus_path: Path,
    cfg: CacheConfig,
    store_url: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    layout_timeout_s: float = 600.0,
    wait_timeout_s: float = 1800.0,
    poll_s: float = 1.0,
    owner: dict | None = None,
    pool_dir: str | Path | None = None,
    take_from_pool: bool = True,
    wait_for_others: bool = True,
) -> dict:
    """Fill the store at ``store_url`` for every segment of every sample in ``corpus_path``.

    Returns a JSON-able summary ``{rows, ok, failed, failure_rate, frames_per_second, seconds,
    failures: [{sample, segment, video, reason}], ...}``: for the whole store on rank 0 (after
    every rank finished), for this rank's rows elsewhere. ``frames_per_second`` and
    ``written`` count this run only; rows found finished are ``skipped``, failed rows turned
    back to pending by ``cfg.retry_failed`` are ``retried`` (and then written). Raises ``DataError``
    on rank 0 when the failed fraction exceeds ``cfg.max_failure_rate``. ``layout_timeout_s``
    bounds how long ranks > 0 wait for rank 0 to create the store, ``wait_timeout_s`` how long
    rank 0 waits for other ranks' rows without seeing any of them finish. ``owner`` (the
    artifact the store is made for, ``framestore.owner_record``) is recorded in a store it creates.
    ``pool_dir``: the work directory's frame pool (``framestore.FramePool``): rows already stored
    there by any store are linked (``linked``), not decoded (unless ``take_from_pool`` is false,
    as for ``--force``), and every row written goes there. Local directory stores only.
    ``wait_for_others=False``: rank 0 too reports only its own rows and does not check the
    failure rate (a job array's tasks: whoever commits reads the whole store).
    """
    started = time.perf_counter()
    corpus_path = Path(corpus_path)
    url = str(store_url)
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"cache: rank {rank} is not in a world of size {world_size}")
    plan = plan_store_rows(corpus_path, cfg)
    if rank == 0:
        group = create_store(corpus_path, cfg, url, owner, plan)
    else:
        group = _wait_for_layout(url, cfg, plan, rank, layout_timeout_s, poll_s, owner)
    arrays = row_arrays(group, write_empty_chunks=True)
    pool = FramePool.for_store(pool_dir, arrays, cfg.layout()) if pool_dir is not None else None
    if pool is not None and rank == 0:
        pruned, freed = pool.prune()
        if pruned:
            log.info("cache: removed %d rows (%.1f MB) of deleted stores from the frame pool %s", pruned, freed / 1e6, pool.dir)

    tasks = plan.tasks_of_rank(rank, world_size)
    retried = _reset_failed(arrays, tasks) if cfg.retry_failed else 0
    if retried:
        log.info("cache: rank %d: retrying %d failed segment(s)", rank, retried)
    own_rows = sum(len(t.rows) for t in tasks)
    log.info("cache: rank %d/%d: %d segments of %d videos -> %s", rank, world_size, own_rows, len(tasks), url)
    with _progress_bar(own_rows, progress and rank == 0) as bar:
        progress_lines = _CacheProgress(rank, world_size, own_rows, enabled=bool(bar.disable))
        results, frames, decode_seconds = _run_tasks(tasks, arrays, cfg, bar, progress_lines, pool, take_from_pool)

    rows = np.concatenate([np.asarray(r.task.rows, dtype=np.int64) for r in results]) if results else np.zeros(0, np.int64)
    status = np.concatenate([r.after for r in results]) if results else np.zeros(0, np.uint8)
    skipped = int(sum((r.before != PENDING).sum() for r in results))
    reasons = {row: why for r in results for row, why in r.reasons.items()}
    whole_store = rank == 0 and (world_size == 1 or wait_for_others)
    if whole_store and world_size > 1:
        mine = np.zeros(plan.rows, dtype=bool)
        mine[rows] = True
        others = np.flatnonzero(~mine)
        if others.size:
            log.info("cache: rank 0 waits for %d segments of the other ranks", others.size)
        rows = np.concatenate([rows, others])
        status = np.concatenate([status, wait_for_rows(arrays.status, others, url, wait_timeout_s, poll_s)])
    order = np.argsort(rows, kind="stable")
    rows, status = rows[order], status[order]

    failed_rows = rows[status == FAILED]
    listed = failed_rows[:MAX_LISTED_FAILURES]
    unknown = np.asarray([r for r in listed if int(r) not in reasons], dtype=np.int64)
    if unknown.size:  # failed in an earlier run or on another rank: the store has the reason
        for row, raw in zip(unknown, np.asarray(arrays.error.oindex[unknown, :])):
            reasons[int(row)] = decode_reason(raw)
    failures = []
    for row in listed:
        sample, segment, video = plan.where(int(row))
        failures.append({"sample": sample, "segment": segment, "video": video, "reason": reasons[int(row)]})

    total, n_failed = len(rows), int(failed_rows.size)
    summary = {
        "rows": total,
        "ok": int((status == OK).sum()),
        "failed": n_failed,
        "pending": int((status == PENDING).sum()),
        "failure_rate": round(n_failed / total, 6) if total else 0.0,
        "frames_per_second": round(frames / decode_seconds, 2) if frames else 0.0,
        "seconds": round(time.perf_counter() - started, 3),
        "written": int(sum(int((r.before == PENDING).sum()) for r in results)),
        "skipped": skipped,
        "retried": retried,
        "linked": int(sum(r.linked for r in results)),
        "frames": frames,
        "videos": len(plan.tasks) if whole_store else len(tasks),
        "samples": len(plan.sample_ids),
        "rank": rank,
        "world_size": world_size,
        "store": url,
        "failures": failures,
    }
    # Each rank's last line shows without --verbose under a multi-rank launch (one process: the stage line says it).
    (progress_log if world_size > 1 else log).info(
        "cache: rank %d/%d: %d ok, %d failed of %d segments; %d written (%d linked from the frame pool) at %.0f frames/s, %d already done",
        *(rank, world_size, summary["ok"], n_failed, total, summary["written"], summary["linked"], summary["frames_per_second"], skipped),
    )
    if whole_store and total and n_failed / total > cfg.max_failure_rate:
        raise _failure_error(summary, cfg, url)
    return summary


def _failure_error(summary: dict, cfg: CacheConfig, url: str) -> DataError:
    first: dict[str, str] = {}
    for f in summary["failures"]:
        first.setdefault(f["video"], f["reason"])
        if len(first) == 3:
            break
    examples = "; ".join(f"{video} ({reason})" for video, reason in first.items())
    error = DataError(
        f"cache: {summary['failed']} of {summary['rows']} segments failed "
        f"({summary['failure_rate']:.1%} > max_failure_rate {cfg.max_failure_rate:.1%}): {examples}; "
        f"see FrameStore('{url}').failures() for all, or raise --max-failure-rate"
    )
    error.summary = summary  # type: ignore[attr-defined]
    return error
