"""The ``cache`` stage: decode a corpus' segments into a Zarr frame store (``data/cache.py``).

Input: a ``prepare`` artifact. Key: the layout of the frames (``CacheConfig.layout``), where the
store goes (``store_url``), and the size and modification time of every video outside the
corpus artifact. Resumable: the store fills row by row in the partial directory; under a
multi-rank launch each rank decodes its own rows. A committed cache is usable only while its
frame store exists.

Under a Slurm job array (``pipeline/ranks.py``) the tasks need not run at the same time: the
first one creates the store under the stage's lock (``setup_share``), each decodes its own
rows without waiting for any other (``run``), and the one that then finds no row pending
(``remaining``) reads the whole store's summary (``summarize``: every row is final, nothing is
decoded) and commits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional

from ..data.cache import CacheConfig
from ..data.framestore import (
    POOL_DIR,
    FrameStore,
    delete_store,
    describe_owner,
    is_frame_store,
    location_exists,
    owner_record,
    read_attrs,
    recorded_owner,
    same_owner,
    same_rows,
    seed_store,
    store_location,
    store_present,
)
from ..errors import ArtifactError, ConfigError
from ..pipeline.artifacts import KEY_CHARS, Artifact, Workdir
from ..pipeline.stage import IndependentRanks, Stage, StageContext
from .prepare import corpus_file

log = logging.getLogger(__name__)


def frame_store_url(artifact: Artifact) -> str:
    """Where a cache artifact's Zarr store lives (inside the artifact unless configured)."""
    return store_location(artifact.path, artifact.summary.get("store_url") or "")


def corpus_of(workdir: Workdir, cache: Artifact) -> Path:
    """The corpus file a cache artifact was built from (a one-line error when it is gone)."""
    corpus = workdir.input_of(cache, "prepare")
    if corpus is None:
        raise ArtifactError(f"the corpus cache {cache.key[:KEY_CHARS]} was built from is gone")
    return corpus_file(corpus)


def key_config(config: CacheConfig) -> dict:
    """What shapes the frames (``layout``: unused and order-only differences removed) and where they go."""
    return {**config.layout(), "store_url": config.store_url}


def fingerprints(config: CacheConfig, inputs: dict[str, Artifact]) -> dict:
    """Size and modification time of every video outside the corpus artifact.

    Videos inside the corpus artifact (the bundled example) are already covered by its key;
    hashing the bytes of every external video would cost a full read of the dataset.
    """
    from ..data.corpus import read_corpus

    videos: set[str] = set()
    for sample in read_corpus(corpus_file(inputs["prepare"])):
        for ref in [sample.video] + [seg.video for seg in sample.segments if seg.video]:
            if "://" in ref or os.path.isabs(ref):
                videos.add(ref)
    return {video: _stat_fingerprint(video) for video in sorted(videos)}


def _stat_fingerprint(url: str) -> Optional[list]:
    if "://" not in url:
        try:
            st = os.stat(url)
        except OSError:
            return None  # a missing video is recorded by the cache stage itself
        return [st.st_size, st.st_mtime_ns]
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except (OSError, ValueError, ImportError):  # ImportError: a protocol's optional package
        return None  # the cache stage records why that video failed
    return [info.get("size"), str(info.get("mtime") or info.get("LastModified") or info.get("ETag") or "")]


def verify(artifact: Artifact) -> Optional[str]:
    """A committed cache is usable only while its Zarr store is still there."""
    return store_present(frame_store_url(artifact))


def _store(ctx: StageContext) -> tuple[str, dict]:
    """Where this cache's frame store goes, and its owner record."""
    if ctx.config.store_url.startswith("memory://"):
        raise ConfigError("store_url: a memory:// store vanishes when the process ends; use a path or a persistent URL")
    identity = ctx.workdir.identity()
    return store_location(ctx.out_dir, ctx.config.store_url), owner_record(identity["id"], identity["path"], "cache", ctx.key)


def _pool_dir(ctx: StageContext) -> Optional[Path]:
    """Frames shared with the work directory's other stores (docs/data-formats.md §13): the
    artifact's own store only."""
    return None if ctx.config.store_url else ctx.workdir.stage_dir("cache") / POOL_DIR


def run(ctx: StageContext) -> dict:
    from ..data.cache import cache_frames

    url, owner = _store(ctx)
    if not ctx.together:
        return _run_share(ctx, url, owner)
    if ctx.force and ctx.config.store_url and ctx.rank == 0:
        _remove_store(ctx.workdir, ctx.config.store_url, owner)  # the partial directory was wiped; an external store too
    if ctx.config.retry_failed and not ctx.config.store_url and ctx.rank == 0 and not os.path.exists(url):
        _seed_from_earlier_store(ctx, url, owner)
    summary = cache_frames(
        corpus_file(ctx.inputs["prepare"]),
        ctx.config,
        url,
        rank=ctx.rank,
        world_size=ctx.world_size,
        progress=ctx.progress,
        owner=owner,
        pool_dir=_pool_dir(ctx),
        take_from_pool=not ctx.force,  # --force decodes every row again
    )
    summary["store_url"] = ctx.config.store_url
    return summary


# --- the tasks of a Slurm job array (pipeline/ranks.py): each its share, none waits ---------------


def setup_share(ctx: StageContext) -> None:
    """Under the stage's lock, before a job array's task writes its rows: the first task creates
    the store, the others find it (two creating one at once would race)."""
    from ..data.cache import create_store

    if ctx.config.retry_failed:
        raise ConfigError(
            "retry_failed under a Slurm job array: a task that finishes early would commit the failed rows of tasks "
            "that have not started yet; run --retry-failed in one process, or under srun or torchrun"
        )
    url, owner = _store(ctx)
    create_store(corpus_file(ctx.inputs["prepare"]), ctx.config, url, owner)


def _run_share(ctx: StageContext, url: str, owner: dict) -> dict:
    """This task's rows (the store exists: ``setup_share``), waiting for no other task; the
    summary of its part."""
    from ..data.cache import cache_frames

    corpus = corpus_file(ctx.inputs["prepare"])
    return cache_frames(
        corpus, ctx.config, url, rank=ctx.rank, world_size=ctx.world_size, progress=ctx.progress, owner=owner,
        pool_dir=_pool_dir(ctx), wait_for_others=False,
    )


def remaining(ctx: StageContext) -> Optional[str]:
    """How many rows are still pending (other tasks' shares), or None when none is."""
    url, _ = _store(ctx)
    counts = FrameStore(url).status_counts()
    return f"{counts['pending']} of {sum(counts.values())} segments still pending" if counts["pending"] else None


def summarize(ctx: StageContext) -> dict:
    """The whole store's summary, as one process finishing it would report it (and the
    failure-rate error): every row is normally final, so this pass only reads; a row left
    pending meanwhile (by a failed run of another launch) is decoded here."""
    from ..data.cache import cache_frames

    url, owner = _store(ctx)
    config = dataclasses.replace(ctx.config, retry_failed=False)
    summary = cache_frames(corpus_file(ctx.inputs["prepare"]), config, url, progress=False, owner=owner)
    summary.update(store_url=ctx.config.store_url, world_size=ctx.world_size)
    return summary


def _remove_store(workdir: Workdir, url: str, owner: dict) -> None:
    """``--force`` with an external ``store_url``: delete the frame store there — only if it is
    one, and only if it belongs to the artifact being rebuilt (never another artifact's or
    another work directory's store, nor a directory of other data)."""
    if not location_exists(url):
        return
    attrs = read_attrs(url)
    if not is_frame_store(attrs):
        raise ConfigError(f"store_url {url}: exists and is not an lfvila frame store; --force will not delete it")
    recorded = recorded_owner(attrs)
    if recorded is not None:
        if not same_owner(recorded, owner):
            raise ConfigError(
                f"store_url {url}: belongs to {describe_owner(recorded)}; --force will not delete another "
                "artifact's frame store (point store_url at another location)"
            )
    else:
        mine = workdir.get("cache", owner["key"])
        if mine is None or frame_store_url(mine) != url:
            raise ConfigError(
                f"store_url {url}: the frame store records no owner (made by an older lfvila) and no cache artifact "
                "of this work directory uses it; --force will not delete it (delete it yourself if nothing needs it)"
            )
    # The artifact of this key reads this store: it stops being visible before the store goes.
    workdir.invalidate("cache", owner["key"])
    delete_store(url)


def _seed_from_earlier_store(ctx: StageContext, url: str, owner: dict) -> None:
    """``--retry-failed`` after videos were fixed or restored: their fingerprints changed, so the
    cache has a new key and a new store. Start it from the newest earlier store of the same rows
    (same corpus segments and layout) in this work directory instead of decoding every row
    again (``framestore.seed_store``: hard-linked files), with the rows of every video whose
    fingerprint changed back to pending. The failed rows are then retried as usual."""
    from ..data.cache import plan_rows, store_spec

    plan = plan_rows(corpus_file(ctx.inputs["prepare"]), ctx.config)
    spec = store_spec(ctx.config, plan)
    fingerprints = ctx.key_payload.get("fingerprints", {})  # stat-ing every video again would cost as much
    earlier = None
    for artifact in sorted(ctx.workdir.artifacts("cache"), key=lambda a: -a.manifest.get("created", 0)):
        if artifact.key == ctx.key or artifact.summary.get("store_url"):
            continue
        if same_rows(read_attrs(store_location(artifact.path)), spec):
            earlier = artifact
            break
    if earlier is None:
        return
    old = earlier.manifest.get("key_payload", {}).get("fingerprints", {})
    changed = {video for video in set(old) | set(fingerprints) if old.get(video) != fingerprints.get(video)}
    rows = [row for task in plan.tasks if task.video in changed or task.source in changed for row in task.rows]
    seed_store(store_location(earlier.path), url, rows, owner)
    log.info("cache: started from the store of cache/%s (%d rows of %d changed videos to decode again)", earlier.key[:KEY_CHARS], len(rows), len(changed))


STAGE = Stage(
    name="cache",
    version=2,  # 2: frame codecs (layout 2 stores); a version-1 cache shows as stale, its store still reads
    config_class=CacheConfig,
    run=run,
    inputs=("prepare",),
    fingerprints=fingerprints,
    key_config=key_config,
    policy_fields=("max_failure_rate", "workers", "retry_failed", "decode_timeout_s"),  # how the frames are made, not what they are
    verify=verify,
    resumable=True,
    independent_ranks=IndependentRanks(setup=setup_share, remaining=remaining, summarize=summarize),
    describe=lambda summary: f"{summary.get('ok', '?')}/{summary.get('rows', '?')} segments cached, {summary.get('failed', 0)} failed"
    + (f", {summary['linked']} shared with earlier caches" if summary.get("linked") else ""),
)
