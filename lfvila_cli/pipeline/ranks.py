"""Multi-rank launches: only rank 0 builds and commits a stage; the other ranks wait for it.

Under torchrun or the DeepSpeed launcher every rank runs the same pipeline. Ranks other than 0
take part only in resumable stages (their own rows of ``cache``), once rank 0 of their own
launch holds the stage's lock, and then wait for rank 0's commit. When rank 0 fails it leaves a
failure marker (``store/<stage>/.failed-<key>``) so that the waiting ranks stop at once with its
error instead of waiting ``LFVILA_RANK_WAIT_S``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import ArtifactError, ConfigError
from .artifacts import KEY_CHARS, Artifact, Workdir
from .locks import FileLock
from .stage import Stage, StageResult

RANK_WAIT_S = float(os.environ.get("LFVILA_RANK_WAIT_S", "3600"))  # other ranks wait this long for rank 0
MARKER_SLACK_S = 10.0  # ranks of one launch reach a stage within this of each other


def dist_env() -> tuple[int, int]:
    """(rank, world size) of a torchrun / deepspeed launch, (0, 1) otherwise."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError("RANK and WORLD_SIZE must be integers") from None


def launch_id() -> str:
    """What the ranks of one launch share: a relaunch (torchrun's restarts included) changes the
    restart count or, usually, the port."""
    env = os.environ
    return "|".join(env.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))


def failure_marker(workdir: Workdir, stage: str, key: str) -> Path:
    """Where rank 0 records that it failed ``stage``/``key`` under a multi-rank launch."""
    return workdir.stage_dir(stage) / f".failed-{key[:KEY_CHARS]}"


def _mark_failed(workdir: Workdir, stage: str, key: str, exc: BaseException) -> None:
    marker = failure_marker(workdir, stage, key)
    record = {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}", "launch": launch_id(), "time": time.time()}
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, marker)
    except OSError:
        pass  # the other ranks fall back to their timeout


def _marked_failure(marker: Path, since: float) -> Optional[str]:
    """The error in ``marker`` if rank 0 of this launch wrote it after ``since`` (less the slack):
    a marker of an earlier launch, or of this one before this rank reached the stage, is not."""
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("launch") != launch_id() or record.get("time", 0) < since - MARKER_SLACK_S:
        return None
    return str(record.get("error", "unknown error"))


@contextlib.contextmanager
def failure_reported(workdir: Workdir, stage: str, key: str, rank: int, world_size: int):
    """Rank 0 of a multi-rank launch leaves a failure marker for any error in the block (after
    removing an earlier launch's)."""
    if rank == 0 and world_size > 1:
        failure_marker(workdir, stage, key).unlink(missing_ok=True)
    try:
        yield
    except BaseException as exc:
        if rank == 0 and world_size > 1:
            _mark_failed(workdir, stage, key, exc)
        raise


def wait_for_launch_lock(workdir: Workdir, stage: Stage, key: str, rank: int, world_size: int, reached: float) -> Optional[StageResult]:
    """A rank other than 0 of a resumable stage starts only once rank 0 of its own launch holds
    the stage's lock (never into the partial work of another process): ``None`` then, or the
    artifact if it is committed meanwhile. ``reached``: when this rank reached the stage."""
    lock = FileLock(workdir.lock_path(stage.name, key))

    def started() -> bool:
        holder = lock.read()
        return bool(holder) and holder.get("launch") == launch_id() and holder.get("started", 0) >= reached - MARKER_SLACK_S

    return _wait_for_rank_zero(workdir, stage, key, rank, world_size, reached, "start", started)


def wait_for_commit(
    workdir: Workdir, stage: Stage, key: str, rank: int, world_size: int, reached: float, replacing: Optional[Artifact] = None
) -> StageResult:
    """A rank other than 0 waits for rank 0 to commit ``stage``/``key``, or for rank 0's failure
    marker of this launch. ``replacing``: the artifact rank 0 rebuilds (``--force``), which stays
    visible until then: wait for another."""
    return _wait_for_rank_zero(workdir, stage, key, rank, world_size, reached, "commit", lambda: False, replacing)


def _wait_for_rank_zero(
    workdir: Workdir, stage: Stage, key: str, rank: int, world_size: int, reached: float, what: str,
    done: Callable[[], bool], replacing: Optional[Artifact] = None,
) -> Optional[StageResult]:
    """Poll until the artifact is committed (returned; not ``replacing``), ``done()`` (``None``),
    rank 0's failure marker of this launch (raised) or ``LFVILA_RANK_WAIT_S``."""
    deadline = time.monotonic() + RANK_WAIT_S
    delay = 0.05
    marker = failure_marker(workdir, stage.name, key)
    old = replacing.manifest.get("created") if replacing is not None else None

    def committed() -> Optional[Artifact]:
        artifact = workdir.get(stage.name, key)
        if artifact is not None and old is not None and artifact.manifest.get("created") == old:
            return None
        return artifact

    while (artifact := committed()) is None:
        if done():
            return None
        error = _marked_failure(marker, reached)
        if error is not None:
            raise ArtifactError(f"rank {rank}/{world_size}: rank 0 failed {stage.name}/{key[:KEY_CHARS]} ({error}); see rank 0's output")
        if time.monotonic() > deadline:
            raise ArtifactError(
                f"rank {rank}/{world_size}: rank 0 did not {what} {stage.name}/{key[:KEY_CHARS]} within "
                f"{RANK_WAIT_S:.0f}s (LFVILA_RANK_WAIT_S); see rank 0's output"
            )
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    return StageResult(stage.name, "up to date", key, artifact, f"{stage.name}: rank {rank} sees {key[:KEY_CHARS]}")
