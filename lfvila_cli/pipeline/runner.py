"""``run_stage``: compute a stage's key, reuse the artifact of that key or build and commit it.

One process builds a given artifact at a time: it holds ``store/<stage>/.lock-<key>``
(``locks.py``) from before it looks for partial work until after it commits. Another process
asking for the same artifact waits, then finds it up to date. A ``--force`` run leaves the old
artifact in place until the new one replaces it. A resumable stage writes into
``store/<stage>/<key>.partial/`` and continues there after a crash; any other stage into a
temporary directory. Under a multi-rank launch only rank 0 commits (``ranks.py``), except
under a Slurm job array, whose tasks need not run together: there each task of a stage that
splits its work that way (``Stage.independent_ranks``) does its share and the one that finds
nothing left commits (``_run_share``), and any other stage is built by one task.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import Any, Callable, Optional

from ..version import __version__
from ..config import to_dict
from ..errors import ArtifactError, ConfigError
from .artifacts import KEY_CHARS, Artifact, Workdir, compute_key, file_checksums, remove_temp_files, verify_files
from .locks import FileLock, describe_holder, holder_gone
from .ranks import (
    Launch,
    current_launch,
    failure_reported,
    require_rendezvous,
    task_lock_path,
    torch_env,
    wait_for_commit,
    wait_for_launch_lock,
    wait_for_tasks,
)
from .stage import Stage, StageContext, StageResult


def run_stage(
    workdir: Workdir,
    stage: Stage,
    config: Any,
    inputs: dict[str, Artifact],
    *,
    force: bool = False,
    dry_run: bool = False,
    name: Optional[str] = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> StageResult:
    """Run ``stage`` unless an artifact with the same key exists; commit atomically (see the
    module docstring). ``name``: also record the artifact under this ref."""
    launch = current_launch()
    rank, world_size = launch.rank, launch.world_size
    # A job array's tasks need not run together: each does its share of a stage that splits its
    # work that way; training is refused (require_rendezvous, below); any other stage is built by
    # the first task to take its lock, as by one process.
    array = world_size > 1 and not launch.together
    share = array and stage.independent_ranks is not None
    if array and not share and not stage.distributed:
        rank, world_size = 0, 1
    reached = time.time()  # when this rank reached the stage: older failure markers are not this launch's
    if name is not None:
        check_ref_name(name)
    if stage.complete is not None:
        config = stage.complete(workdir, config, inputs)
    payload = stage.key_payload(config, inputs)
    key = compute_key(payload)
    short = key[:KEY_CHARS]
    existing = workdir.get(stage.name, key)
    if existing is not None and not force:
        problem = unusable(stage, existing)
        if problem is None:
            return _up_to_date(workdir, stage, config, existing, name, rank, dry_run, echo)
        if rank == 0:
            echo(f"{stage.name}: artifact {short} is unusable ({problem}); running again")
    rebuild = force or existing is not None  # replace the artifact of this key when committing
    if dry_run:
        line = f"{stage.name}: would run ({short})" + (" [--force]" if existing else "")
        echo(line)
        return StageResult(stage.name, "would run", key, None, line)
    if stage.distributed and world_size > 1:
        require_rendezvous(launch, stage.name)
        if launch.kind == "srun":  # hand the Slurm ranks to torch.distributed (and DeepSpeed), which read RANK
            os.environ.update(torch_env(launch))
    if rebuild and world_size > 1 and stage.resumable:
        raise ConfigError("--force under a multi-rank launch would race; run it once in a single process")
    if share:
        return _run_share(workdir, stage, config, inputs, payload, key, launch, name, progress, echo)
    if rank != 0:
        if not stage.resumable:
            return wait_for_commit(workdir, stage, key, rank, world_size, reached, replacing=existing if rebuild else None)
        committed = wait_for_launch_lock(workdir, stage, key, rank, world_size, reached)
        if committed is not None:
            return committed
        return _build(workdir, stage, config, inputs, payload, key, None, rank, world_size, rebuild, name, progress, echo, reached)
    lock = FileLock(workdir.lock_path(stage.name, key), launch=launch.id)
    lock.acquire(on_wait=_waiting(stage, short, lock, echo))
    try:
        if not force:  # another process may have committed it while this one waited
            existing = workdir.get(stage.name, key)
            if existing is not None and unusable(stage, existing) is None:
                return _up_to_date(workdir, stage, config, existing, name, rank, dry_run, echo)
        # a job array's tasks of another launch may still write their shares: never alongside them
        wait_for_tasks(workdir, stage.name, key, launch.id, echo)
        return _build(workdir, stage, config, inputs, payload, key, lock, rank, world_size, rebuild, name, progress, echo, reached)
    finally:
        lock.release()


def _waiting(stage: Stage, short: str, lock: FileLock, echo) -> Callable[[dict], None]:
    def waiting(holder: dict) -> None:
        if holder_gone(holder):
            echo(f"{stage.name}: {describe_holder(holder)} was stopped while building {short}; taking its lock over once its heartbeat has stopped")
        else:
            echo(f"{stage.name}: waiting for {describe_holder(holder)}, which is building {short} ({lock.path})")

    return waiting


def unusable(stage: Stage, artifact: Artifact) -> Optional[str]:
    """Why a committed artifact cannot be used as it is (a file changed since it was written, a
    stage's own check such as a cache's missing frame store), or ``None``."""
    problem = verify_files(artifact)
    if problem is None and stage.verify is not None:
        problem = stage.verify(artifact)
    return problem


def check_inputs(inputs: dict[str, Artifact]) -> None:
    """Refuse to use an input artifact whose files differ from its manifest (one line)."""
    for name, artifact in sorted(inputs.items()):
        problem = verify_files(artifact)
        if problem is not None:
            raise ArtifactError(
                f"{name}/{artifact.key[:KEY_CHARS]} ({artifact.path}): {problem}; rebuild it with its stage's --force"
            )


def check_ref_name(name: str) -> None:
    """A ref name becomes a file name under refs/<stage>/: plain characters only."""
    if name == "latest" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ConfigError(
            f"--name {name!r}: use letters, digits, '.', '_' or '-' (not starting with '.' or '-'); 'latest' is reserved"
        )


def _set_refs(workdir: Workdir, stage: str, key: str, name: Optional[str]) -> None:
    workdir.set_ref(stage, "latest", key)
    if name:
        workdir.set_ref(stage, name, key)


def _up_to_date(workdir: Workdir, stage: Stage, config: Any, existing: Artifact, name: Optional[str], rank: int, dry_run: bool, echo) -> StageResult:
    if stage.on_reuse is not None:
        stage.on_reuse(config, existing)  # e.g. prepare --strict refuses a corpus that rejected records
    key = existing.manifest.get("key", existing.key)
    if not dry_run and rank == 0:
        _set_refs(workdir, stage.name, key, name)
    line = f"{stage.name}: up to date ({key[:KEY_CHARS]}) — {stage.describe(existing.summary)}; nothing to do"
    if rank == 0:
        echo(line)
    return StageResult(stage.name, "up to date", key, existing, line)


def _build(workdir, stage, config, inputs, payload, key, lock, rank, world_size, rebuild, name, progress, echo, reached) -> StageResult:
    """Run the stage's body into its partial (resumable) or temporary directory and commit it
    (rank 0, holding ``lock``)."""
    # Rank 0 of a multi-rank launch leaves a failure marker for any error from here to the commit.
    with failure_reported(workdir, stage.name, key, rank, world_size):
        check_inputs(inputs)
        started = time.time()
        resumed = False
        if stage.resumable:
            out_dir = workdir.partial_dir(stage.name, key)
            if rebuild and rank == 0:
                shutil.rmtree(out_dir, ignore_errors=True)
            resumed = out_dir.is_dir() and any(out_dir.iterdir())
            out_dir.mkdir(parents=True, exist_ok=True)
            if resumed and rank == 0:
                echo(f"{stage.name}: resuming in {out_dir}")
        else:
            out_dir = workdir.new_temp_dir(stage.name, key)
        ctx = StageContext(workdir, config, inputs, out_dir, key, rank, world_size, progress and rank == 0, rebuild, payload)
        try:
            summary = stage.run(ctx) or {}
        except BaseException:
            if not stage.resumable:
                shutil.rmtree(out_dir, ignore_errors=True)
            elif rank == 0 and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # nothing to resume: do not list it as incomplete work
            raise
        if rank != 0:
            echo(f"{stage.name}: rank {rank}/{world_size} finished its rows; rank 0 commits")
            return wait_for_commit(workdir, stage, key, rank, world_size, reached)
        return _commit(workdir, stage, config, inputs, payload, key, out_dir, lock, summary, started, resumed, rebuild, name, echo)


def _commit(workdir, stage, config, inputs, payload, key, out_dir, lock, summary, started, resumed, rebuild, name, echo) -> StageResult:
    """Write the manifest of ``out_dir`` and commit it (holding ``lock``)."""
    short = key[:KEY_CHARS]
    manifest = {
        "stage": stage.name,
        "version": stage.version,
        "key": key,
        "key_payload": payload,
        "inputs": payload["inputs"],
        # Where each input lived, so `status` finds inputs from another work directory.
        "input_paths": {name: str(artifact.path.resolve()) for name, artifact in sorted(inputs.items())},
        "created": time.time(),
        "seconds": round(time.time() - started, 3),
        "lfvila_version": __version__,
        "summary": summary,
    }
    if resumed:  # writers killed in an earlier run may have left their temporary files
        remove_temp_files(out_dir)
    manifest["files"] = file_checksums(out_dir)
    lock.check()
    artifact = workdir.commit(out_dir, stage.name, key, manifest, to_dict(config), replace=rebuild)
    _set_refs(workdir, stage.name, key, name)
    line = f"{stage.name}: done ({short}) in {manifest['seconds']:.1f}s — {stage.describe(summary)}"
    echo(line)
    return StageResult(stage.name, "done", key, artifact, line)


def _run_share(workdir, stage, config, inputs, payload, key, launch: Launch, name, progress, echo) -> StageResult:
    """One task of a Slurm job array does its share of a stage whose ranks need not run together
    (``Stage.independent_ranks``), waiting for no other task.

    Under the stage's lock (which a process of another launch holds for its whole build, a task
    only for a moment): the artifact if it is committed; else wait for the tasks of another
    launch that still write their shares (``ranks.wait_for_tasks``), make the shared output
    (``setup``) and take this task's own lock. Without the stage's lock: the body, this rank's
    share. Then, if work is left (a share not done yet, or one a stopped task left), say so and
    leave the commit to the task that finishes last, or to a later run; else, under the stage's
    lock again, the artifact if another process committed it meanwhile, or wait for the other
    tasks' last reads, summarize and commit."""
    hooks = stage.independent_ranks
    short = key[:KEY_CHARS]
    rank, world_size = launch.rank, launch.world_size
    lock = FileLock(workdir.lock_path(stage.name, key), launch=launch.id)
    own = FileLock(task_lock_path(workdir, stage.name, key, rank), launch=launch.id)
    out_dir = workdir.partial_dir(stage.name, key)
    ctx = StageContext(workdir, config, inputs, out_dir, key, rank, world_size, progress, False, payload, together=False)
    started = time.time()

    def committed() -> Optional[StageResult]:
        existing = workdir.get(stage.name, key)
        if existing is not None and unusable(stage, existing) is None:
            return _up_to_date(workdir, stage, config, existing, name, 0, False, echo)
        return None

    lock.acquire(on_wait=_waiting(stage, short, lock, echo))
    try:
        if (result := committed()) is not None:
            return result
        wait_for_tasks(workdir, stage.name, key, launch.id, echo)
        check_inputs(inputs)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            hooks.setup(ctx)
        except BaseException:
            if not any(out_dir.iterdir()):
                out_dir.rmdir()  # nothing to resume: do not list it as incomplete work
            raise
        own.acquire()
    finally:
        lock.release()
    try:
        part = stage.run(ctx) or {}
    finally:
        own.release()
    # Work left once this task's share is final: a task still at work, or one yet to start, looks
    # again after its own share (no lock needed to leave; the last one to finish sees none left).
    try:
        left = hooks.remaining(ctx)
    except Exception:
        if (result := committed()) is not None:
            return result  # a process of another launch, which waited for this task, committed meanwhile
        raise
    if left is not None:
        line = (
            f"{stage.name}: {launch.what} (rank {rank}/{world_size}) did its share of {short} ({stage.describe(part)}); "
            f"{left}: the task that finishes last commits (if a task was stopped, run the same command again)"
        )
        echo(line)
        return StageResult(stage.name, "partial", key, None, line)
    lock.acquire(on_wait=_waiting(stage, short, lock, echo))
    try:
        if (result := committed()) is not None:
            return result
        wait_for_tasks(workdir, stage.name, key, None, echo)  # the other tasks' last reads of the output
        summary = hooks.summarize(ctx)  # as one process would finish it: with nothing left, it only reads
        return _commit(workdir, stage, config, inputs, payload, key, out_dir, lock, summary, started, True, False, name, echo)
    finally:
        lock.release()
