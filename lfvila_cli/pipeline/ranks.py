"""Multi-rank launches: where a rank's number comes from, and how the ranks of one launch meet
(docs/engineering.md §5).

Where the rank, the world size and the launch's identity come from (``current_launch``), first
match wins:

1. ``RANK``/``WORLD_SIZE`` (torchrun, the DeepSpeed launcher): they take precedence, so torchrun
   inside an sbatch script behaves as anywhere else. Launch: ``MASTER_ADDR``, ``MASTER_PORT``,
   torchrun's run id and restart count.
2. A Slurm job array (``SLURM_ARRAY_TASK_ID``): rank = (task id - ``SLURM_ARRAY_TASK_MIN``) /
   ``SLURM_ARRAY_TASK_STEP``, world = ``SLURM_ARRAY_TASK_COUNT``; the ids must form one range
   (``--array=A-B`` or ``A-B:S``). An srun step inside each task multiplies both (rank = task
   index x step tasks + ``SLURM_PROCID``). Launch: ``SLURM_ARRAY_JOB_ID``. The tasks do not
   run together: the scheduler starts each when resources free up.
3. The tasks of an srun step (``SLURM_PROCID`` of ``SLURM_STEP_NUM_TASKS``, else
   ``SLURM_NTASKS``; only where ``SLURM_STEP_ID`` names a real step, not a batch script's own
   process, which is one process whatever ``--ntasks`` says). Launch: ``SLURM_JOB_ID`` and
   ``SLURM_STEP_ID``.
4. One process.

Ranks that run together (1, 3): only rank 0 builds and commits a stage; the other ranks take
part only in resumable stages (their own rows of ``cache``), once rank 0 of their own launch
holds the stage's lock, and then wait for rank 0's commit. When rank 0 fails it leaves a
failure marker (``store/<stage>/.failed-<key>``) so that the waiting ranks stop at once with
its error instead of waiting ``LFVILA_RANK_WAIT_S``. Stages that train (``Stage.distributed``)
also need a rendezvous: under srun, ``MASTER_ADDR``/``MASTER_PORT`` given by the job script;
the runner then hands the Slurm ranks to torch.distributed (``torch_env``: ``RANK``...).

The tasks of a job array (2) never wait for one another: a stage that can split its work that
way (``Stage.independent_ranks``: ``cache``) has each task do its share and the last one to
find nothing left commit (``runner.py``); every other stage is built by the first task that
takes its lock, as by one process, and training is refused. While it writes its share a task
holds ``store/<stage>/.lock-<key>.task-<rank>``, so that a process of another launch waits for
it (``wait_for_tasks``) instead of writing the same rows or committing under it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

from ..errors import ArtifactError, ConfigError
from .artifacts import KEY_CHARS, Artifact, Workdir
from .locks import FileLock, describe_holder
from .stage import Stage, StageResult

RANK_WAIT_S = float(os.environ.get("LFVILA_RANK_WAIT_S", "3600"))  # other ranks wait this long for rank 0
MARKER_SLACK_S = 10.0  # ranks of one launch reach a stage within this of each other
SPECIAL_STEPS = 0xFFFFFFF0  # Slurm's step ids from here up: the batch script, extern and interactive steps
LAUNCH_VAR = "LFVILA_LAUNCH_ID"  # set with RANK by ``torch_env``: the launch keeps its Slurm identity


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch (``current_launch``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    id: str = ""  # what the ranks of one launch share, and a relaunch changes
    kind: str = "single"  # single | torchrun | srun | array
    what: str = "one process"  # for messages: "task 7 of Slurm array job 1234"

    @property
    def together(self) -> bool:
        """Whether the ranks run at the same time (a job array's tasks need not)."""
        return self.kind != "array"


def _int_var(env: Mapping[str, str], name: str, default: Optional[int] = None, why: str = "") -> int:
    value = env.get(name)
    if value is None:
        if default is None:
            raise ConfigError(f"{name} is not set{why}")
        return default
    try:
        return int(value.strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _check_rank(rank: int, rank_var: str, world: int, world_var: str) -> None:
    if world < 1:
        raise ConfigError(f"{world_var}={world}: the world size must be >= 1")
    if rank < 0:
        raise ConfigError(f"{rank_var}={rank}: a rank must be >= 0")
    if rank >= world:
        raise ConfigError(f"{rank_var}={rank} is not below {world_var}={world}: ranks are 0 to world size - 1")


def _torchrun_id(env: Mapping[str, str]) -> str:
    """A relaunch (torchrun's restarts included) changes the restart count or, usually, the port."""
    return env.get(LAUNCH_VAR) or "|".join(env.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT"))


def _srun_step(env: Mapping[str, str]) -> Optional[tuple[int, int, int, str]]:
    """(rank, world size, local rank, "job.step") of a task of an srun step, or None outside one."""
    step_var = "SLURM_STEP_ID" if "SLURM_STEP_ID" in env else "SLURM_STEPID"
    if step_var not in env or "SLURM_PROCID" not in env:
        return None
    step = _int_var(env, step_var)
    if step >= SPECIAL_STEPS:
        return None  # a batch script's (or an interactive shell's) own process: one process
    world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    world = _int_var(env, world_var, why=" (the number of tasks of the srun step SLURM_PROCID counts in)")
    rank = _int_var(env, "SLURM_PROCID")
    _check_rank(rank, "SLURM_PROCID", world, world_var)
    return rank, world, _int_var(env, "SLURM_LOCALID", 0), f"{env.get('SLURM_JOB_ID', '')}.{step}"


def _array_task(env: Mapping[str, str]) -> tuple[int, int, str]:
    """(index, count, array job id) of a task of a Slurm job array."""
    why = " (a Slurm job array's tasks need it to know their rank)"
    task = _int_var(env, "SLURM_ARRAY_TASK_ID")
    low = _int_var(env, "SLURM_ARRAY_TASK_MIN", why=why)
    count = _int_var(env, "SLURM_ARRAY_TASK_COUNT", why=why)
    stride = _int_var(env, "SLURM_ARRAY_TASK_STEP", 1)
    job = env.get("SLURM_ARRAY_JOB_ID", "").strip()
    if not job:
        raise ConfigError(f"SLURM_ARRAY_JOB_ID is not set{why}")
    if count < 1:
        raise ConfigError(f"SLURM_ARRAY_TASK_COUNT={count}: the world size must be >= 1")
    if stride < 1:
        raise ConfigError(f"SLURM_ARRAY_TASK_STEP={stride}: must be >= 1")
    one_range = "the array's task ids must be one range (--array=A-B or A-B:S)"
    if "SLURM_ARRAY_TASK_MAX" in env:
        high = _int_var(env, "SLURM_ARRAY_TASK_MAX")
        if low + (count - 1) * stride != high:
            raise ConfigError(
                f"SLURM_ARRAY_TASK_COUNT={count} tasks from SLURM_ARRAY_TASK_MIN={low} to SLURM_ARRAY_TASK_MAX={high} "
                f"(step {stride}) are not one range: {one_range}"
            )
    if (task - low) % stride:
        raise ConfigError(f"SLURM_ARRAY_TASK_ID={task} is not SLURM_ARRAY_TASK_MIN={low} plus a multiple of SLURM_ARRAY_TASK_STEP={stride}: {one_range}")
    index = (task - low) // stride
    if not 0 <= index < count:
        raise ConfigError(
            f"SLURM_ARRAY_TASK_ID={task} is task {index} from SLURM_ARRAY_TASK_MIN={low}, not below "
            f"SLURM_ARRAY_TASK_COUNT={count}: {one_range}"
        )
    return index, count, job


def current_launch(env: Mapping[str, str] = os.environ) -> Launch:
    """This process's rank, world size and launch (the module docstring says from where); a
    variable that is not an integer, or a rank outside the world, is a one-line ``ConfigError``
    naming it."""
    if "RANK" in env or "WORLD_SIZE" in env:
        rank, world = _int_var(env, "RANK", 0), _int_var(env, "WORLD_SIZE", 1)
        _check_rank(rank, "RANK", world, "WORLD_SIZE")
        local = _int_var(env, "LOCAL_RANK", 0)
        return Launch(rank, world, local, _torchrun_id(env), "torchrun", f"rank {rank}/{world}")
    step = _srun_step(env)
    if "SLURM_ARRAY_TASK_ID" in env:
        index, count, job = _array_task(env)
        tasks, procid, local = (step[1], step[0], step[2]) if step else (1, 0, 0)
        rank = index * tasks + procid
        what = f"task {env['SLURM_ARRAY_TASK_ID'].strip()} of Slurm array job {job}" + (f", srun task {procid}" if step else "")
        return Launch(rank, count * tasks, local, f"slurm-array:{job}", "array", what)
    if step is not None:
        rank, world, local, job_step = step
        return Launch(rank, world, local, f"slurm:{job_step}", "srun", f"task {rank}/{world} of Slurm job step {job_step}")
    return Launch(id=_torchrun_id(env))


def dist_env() -> tuple[int, int]:
    """(rank, world size) of this process (``current_launch``); (0, 1) for one process."""
    launch = current_launch()
    return launch.rank, launch.world_size


def launch_id() -> str:
    """What the ranks of one launch share (``current_launch``)."""
    return current_launch().id


def require_rendezvous(launch: Launch, what: str) -> None:
    """A one-line ``ConfigError`` where ``what`` (a stage that trains) cannot form a
    torch.distributed process group over these ranks: a job array's tasks (they do not run
    together), or srun's tasks without ``MASTER_ADDR``/``MASTER_PORT``."""
    if launch.world_size <= 1 or launch.kind in ("single", "torchrun"):
        return
    if not launch.together:
        raise ConfigError(
            f"{what}: the {launch.world_size} tasks of a Slurm job array run one by one as resources free up and cannot "
            "train together; train in one job step instead (srun with MASTER_ADDR/MASTER_PORT set, or torchrun)"
        )
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"{what} under srun ({launch.world_size} tasks) needs a rendezvous: {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set; export MASTER_ADDR=$(scontrol show hostnames "
            "\"$SLURM_JOB_NODELIST\" | head -n 1) and MASTER_PORT=<a free port> in the job script, or run torchrun under srun"
        )


def torch_env(launch: Launch) -> dict[str, str]:
    """The variables torch.distributed and DeepSpeed read, for a launch whose ranks come from
    Slurm (check ``require_rendezvous`` first); the launch keeps its identity (``LAUNCH_VAR``)."""
    return {"RANK": str(launch.rank), "WORLD_SIZE": str(launch.world_size), "LOCAL_RANK": str(launch.local_rank), LAUNCH_VAR: launch.id}


# --- a job array's tasks -------------------------------------------------------------------------


def task_lock_path(workdir: Workdir, stage: str, key: str, rank: int) -> Path:
    """Held by a job array's task while it writes its share of ``stage``/``key``: the stage's
    lock (``Workdir.lock_path``) with ``.task-<rank>`` after its name."""
    lock = workdir.lock_path(stage, key)
    return lock.with_name(f"{lock.name}.task-{rank}")


def running_tasks(workdir: Workdir, stage: str, key: str, other_than: Optional[str] = None) -> list[tuple[Path, dict]]:
    """The job-array tasks writing their share of ``stage``/``key`` now (lock path, holder),
    leaving out those of the launch ``other_than``."""
    stage_lock = workdir.lock_path(stage, key)
    pattern = re.compile(rf"{re.escape(stage_lock.name)}\.task-\d+")
    found = []
    for path in sorted(stage_lock.parent.glob(f"{stage_lock.name}.task-*")):
        if not pattern.fullmatch(path.name):
            continue  # a lock's own temporary or stale file
        lock = FileLock(path)
        holder = lock.read()
        if holder is None or (other_than is not None and holder.get("launch") == other_than):
            continue
        if not holder or lock.stale_reason(holder) is None:
            found.append((path, holder))
    return found


def wait_for_tasks(workdir: Workdir, stage: str, key: str, other_than: Optional[str], echo: Callable[[str], None]) -> None:
    """Wait until no job-array task (but those of the launch ``other_than``) writes its share of
    ``stage``/``key``: each task lock is taken once its holder releases it, or once it is stale
    (its task was killed), and given back."""
    for path, holder in running_tasks(workdir, stage, key, other_than):
        lock = FileLock(path)
        lock.acquire(on_wait=lambda h: echo(
            f"{stage}: waiting for {describe_holder(h)} ({h.get('launch', '?')}), which writes its share of {key[:KEY_CHARS]}"
        ))
        lock.release()


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
        ours = bool(holder) and holder.get("launch") == launch_id() and holder.get("started", 0) >= reached - MARKER_SLACK_S
        # and rank 0 no longer waits for job-array tasks of another launch writing rows (``wait_for_tasks``)
        return ours and not running_tasks(workdir, stage.name, key, other_than=launch_id())

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
