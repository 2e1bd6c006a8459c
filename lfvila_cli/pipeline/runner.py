"""``run_stage``: compute a stage's key, reuse the artifact of that key or build and commit it.

One process builds a given artifact at a time: it holds ``store/<stage>/.lock-<key>``
(``locks.py``) from before it looks for partial work until after it commits. Another process
asking for the same artifact waits, then finds it up to date. A ``--force`` run leaves the old
artifact in place until the new one replaces it. A resumable stage writes into
``store/<stage>/<key>.partial/`` and continues there after a crash; any other stage into a
temporary directory. Under a multi-rank launch only rank 0 commits (``ranks.py``).
"""

from __future__ import annotations

import re
import shutil
import time
from typing import Any, Callable, Optional

from .. import __version__
from ..config import to_dict
from ..errors import ArtifactError, ConfigError
from .artifacts import KEY_CHARS, Artifact, Workdir, compute_key, file_checksums, remove_temp_files, verify_files
from .locks import FileLock, describe_holder, holder_gone
from .ranks import dist_env, failure_reported, launch_id, wait_for_commit, wait_for_launch_lock
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
    rank, world_size = dist_env()
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
            return _up_to_date(workdir, stage, existing, name, rank, dry_run, echo)
        if rank == 0:
            echo(f"{stage.name}: artifact {short} is unusable ({problem}); running again")
    rebuild = force or existing is not None  # replace the artifact of this key when committing
    if dry_run:
        line = f"{stage.name}: would run ({short})" + (" [--force]" if existing else "")
        echo(line)
        return StageResult(stage.name, "would run", key, None, line)
    if rebuild and world_size > 1 and stage.resumable:
        raise ConfigError("--force under a multi-rank launch would race; run it once in a single process")
    if rank != 0:
        if not stage.resumable:
            return wait_for_commit(workdir, stage, key, rank, world_size, reached, replacing=existing if rebuild else None)
        committed = wait_for_launch_lock(workdir, stage, key, rank, world_size, reached)
        if committed is not None:
            return committed
        return _build(workdir, stage, config, inputs, payload, key, None, rank, world_size, rebuild, name, progress, echo, reached)
    lock = FileLock(workdir.lock_path(stage.name, key), launch=launch_id())

    def waiting(holder: dict) -> None:
        if holder_gone(holder):
            echo(f"{stage.name}: {describe_holder(holder)} was stopped while building {short}; taking its lock over once its heartbeat has stopped")
        else:
            echo(f"{stage.name}: waiting for {describe_holder(holder)}, which is building {short} ({lock.path})")

    lock.acquire(on_wait=waiting)
    try:
        if not force:  # another process may have committed it while this one waited
            existing = workdir.get(stage.name, key)
            if existing is not None and unusable(stage, existing) is None:
                return _up_to_date(workdir, stage, existing, name, rank, dry_run, echo)
        return _build(workdir, stage, config, inputs, payload, key, lock, rank, world_size, rebuild, name, progress, echo, reached)
    finally:
        lock.release()


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


def _up_to_date(workdir: Workdir, stage: Stage, existing: Artifact, name: Optional[str], rank: int, dry_run: bool, echo) -> StageResult:
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
    short = key[:KEY_CHARS]
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
