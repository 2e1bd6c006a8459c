"""Ranks from Slurm with no launcher of ours (lfvila_cli/pipeline/ranks.py).

The tasks of an srun step (``SLURM_PROCID`` of ``SLURM_NTASKS``) and the tasks of a job array
(``SLURM_ARRAY_TASK_*``), started here as local processes of ``lfvila cache`` with no
torchrun variables, split the rows of one cache and make the store one process makes; array
tasks that never overlap each do their share and the last one commits; a rerun with another
number of ranks decodes exactly the rows left pending. torchrun's variables take precedence,
and a bad value is a one-line ``ConfigError`` naming the variable.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_video import make_video
from test_cli import invoke

import toy_stage
from lfvila_cli.data.framestore import FrameStore
from lfvila_cli.errors import ConfigError
from lfvila_cli.launch import in_launched_rank
from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.pipeline.locks import FileLock
from lfvila_cli.pipeline.ranks import current_launch, dist_env, launch_id, task_lock_path
from lfvila_cli.pipeline.runner import run_stage
from lfvila_cli.pipeline.stage import resolve_config
from lfvila_cli.stages.cache import frame_store_url

REPO = Path(__file__).resolve().parents[1]
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "LFVILA_LAUNCH_ID")
# Small frames, one decode thread in this process (no decode child to start): fast ranks.
CACHE = ["--set", "frames_per_segment=2", "--set", "height=32", "--set", "width=48", "--set", "workers=1",
         "--set", "decode_timeout_s=0", "--max-failure-rate", "0.5"]
ROWS, FAILED_ROWS = 13, 1  # 4 videos x 3 segments, and one segment of a missing video


def srun_vars(rank: int, ntasks: int, job: int = 4242, step: int = 0) -> dict[str, str]:
    """What srun gives each task of a step."""
    return {"SLURM_JOB_ID": str(job), "SLURM_STEP_ID": str(step), "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(ntasks),
            "SLURM_LOCALID": str(rank)}


def array_vars(task: int, count: int, low: int = 0, job: int = 5151) -> dict[str, str]:
    """What a job array's task (its batch script, no srun) has: each task is a job of its own;
    the batch step's SLURM_PROCID=0 / SLURM_NTASKS=1 name no srun step."""
    return {"SLURM_ARRAY_JOB_ID": str(job), "SLURM_JOB_ID": str(job + 1 + task), "SLURM_ARRAY_TASK_ID": str(low + task),
            "SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_MAX": str(low + count - 1),
            "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_ARRAY_TASK_STEP": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}


def process_env(slurm: dict[str, str]) -> dict[str, str]:
    """This environment without any launcher's or Slurm's variables, plus ``slurm``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **slurm}


def cli_env(slurm: dict[str, str]) -> dict:
    """For CliRunner.invoke(env=...): launcher and Slurm variables removed (None), ``slurm`` set."""
    gone = {k: None for k in os.environ if k in LAUNCHER_VARS or k.startswith("SLURM_")}
    return {**gone, **{k: None for k in LAUNCHER_VARS}, **slurm}


def cache_command(wd: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lfvila_cli.main", "cache", "--workdir", str(wd), *CACHE, *extra]


def start(wd: Path, slurm: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(cache_command(wd, *extra), env=process_env(slurm), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    """The outputs of ``procs``; each must exit 0."""
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """4 videos of 3 segments, and a sample whose video is missing. Round-robin by video over 3
    ranks: rank 0 has v0 and v3 (6 rows), rank 1 v1 and the missing one (3 + 1), rank 2 v2 (3)."""
    root = tmp_path_factory.mktemp("slurm")
    lines = []
    for i in range(4):
        video = make_video(root / f"v{i}.mp4", seed=i)
        segs = [{"start": s, "end": s + 1.0, "text": f"part {s}"} for s in range(3)]
        lines.append({"id": f"s{i}", "video": str(video), "duration": 3.0, "split": "train", "segments": segs})
    lines.append({"id": "gone", "video": str(root / "gone.mp4"), "duration": 3.0, "split": "train",
                  "segments": [{"start": 0.0, "end": 1.0, "text": "lost"}]})
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def prepared(wd: Path, corpus: Path) -> Path:
    assert invoke("prepare", "--source", "jsonl", "--workdir", wd, "--set", f"jsonl.path={corpus}", env=cli_env({})).exit_code == 0
    return wd


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> str:
    """The store of the same cache made by one process."""
    wd = prepared(tmp_path_factory.mktemp("one") / "wd", corpus)
    result = invoke("cache", "--workdir", wd, *CACHE, env=cli_env({}))
    assert result.exit_code == 0 and f"{ROWS - FAILED_ROWS}/{ROWS} segments cached, {FAILED_ROWS} failed" in result.output, result.output
    return frame_store_url(Workdir(wd).resolve("cache"))


def committed_store(wd: Path) -> str:
    artifacts = Workdir(wd).artifacts("cache")
    assert len(artifacts) == 1
    return frame_store_url(artifacts[0])


def assert_same_store(url: str, reference: str) -> None:
    """Row for row the same frames, times, statuses and failure reasons."""
    ours, one = FrameStore(url), FrameStore(reference)
    assert ours.sample_ids == one.sample_ids
    np.testing.assert_array_equal(ours.status(), one.status())
    assert [(f["sample"], f["reason"]) for f in ours.failures()] == [(f["sample"], f["reason"]) for f in one.failures()]
    for sample_id in one.sample_ids:
        if sample_id == "gone":
            continue
        for a, b in zip(ours.sample(sample_id), one.sample(sample_id)):
            np.testing.assert_array_equal(a, b)


def row_files(url: str) -> dict[int, dict[str, int]]:
    """{row: {chunk file: mtime_ns}} of the store's per-row arrays (one row per chunk)."""
    files: dict[int, dict[str, int]] = {}
    root = Path(url)
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        match = re.match(r"(?!sample_)[^/]+/c/(\d+)(/|$)", rel)
        if path.is_file() and match:
            files.setdefault(int(match.group(1)), {})[rel] = path.stat().st_mtime_ns
    return files


# --- where ranks come from ----------------------------------------------------------------------


def test_ranks_come_from_torchrun_first_then_a_job_array_then_srun():
    srun = srun_vars(3, 4)
    launch = current_launch(srun)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.id, launch.together) == (3, 4, 3, "slurm:4242.0", True)
    # torchrun inside an sbatch script: its variables win over Slurm's (and its launch identity)
    torchrun = {**srun, **array_vars(1, 3), "RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "node7", "MASTER_PORT": "29500"}
    launch = current_launch(torchrun)
    assert (launch.rank, launch.world_size, launch.kind, launch.id) == (1, 2, "torchrun", "node7|29500||")
    # a job array: rank = task id - min, world = count; one launch for all its tasks
    launch = current_launch(array_vars(2, 5, low=10))
    assert (launch.rank, launch.world_size, launch.id, launch.together) == (2, 5, "slurm-array:5151", False)
    assert current_launch(array_vars(4, 5, low=10)).id == launch.id
    strided = {**array_vars(0, 3, low=4), "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MAX": "12", "SLURM_ARRAY_TASK_STEP": "4"}
    assert (current_launch(strided).rank, current_launch(strided).world_size) == (1, 3)  # --array=4-12:4
    # srun inside each array task: its tasks count within the array
    both = current_launch({**array_vars(2, 3), **srun_vars(1, 2)})
    assert (both.rank, both.world_size, both.id) == (5, 6, "slurm-array:5151")
    # a batch script's own process (no step, or Slurm's batch/interactive step) is one process
    for env in ({"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, {**srun_vars(0, 8), "SLURM_STEP_ID": str(0xFFFFFFFB)}):
        assert (current_launch(env).rank, current_launch(env).world_size, current_launch(env).kind) == (0, 1, "single")
    # SLURM_STEP_NUM_TASKS (the step's own count) before SLURM_NTASKS (the job's)
    assert current_launch({**srun_vars(1, 8), "SLURM_STEP_NUM_TASKS": "2"}).world_size == 2
    assert current_launch({}).world_size == 1


def clear_launch_vars(monkeypatch) -> None:
    """No launcher or Slurm variable in this process; those the runner sets are removed again
    after the test (set, then deleted: monkeypatch restores what it saw first)."""
    for name in {*LAUNCHER_VARS, *(n for n in os.environ if n.startswith("SLURM_"))}:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_dist_env_and_launch_id_read_the_process_environment(monkeypatch):
    clear_launch_vars(monkeypatch)
    for name, value in srun_vars(1, 3).items():
        monkeypatch.setenv(name, value)
    assert dist_env() == (1, 3) and launch_id() == "slurm:4242.0"
    assert in_launched_rank(), "srun's tasks are ranks: --num-gpus does not launch again"
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not in_launched_rank()  # srun -n 1 lfvila pretrain --num-gpus 8 may launch
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_env() == (0, 2)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0: the world size must be >= 1"),
        ({**srun_vars(0, 2), "SLURM_PROCID": "x"}, "SLURM_PROCID='x' is not an integer"),
        ({**srun_vars(0, 2), "SLURM_NTASKS": "2 tasks"}, "SLURM_NTASKS='2 tasks' is not an integer"),
        (srun_vars(2, 2), "SLURM_PROCID=2 is not below SLURM_NTASKS=2"),
        ({**srun_vars(3, 2), "SLURM_STEP_NUM_TASKS": "3"}, "SLURM_PROCID=3 is not below SLURM_STEP_NUM_TASKS=3"),
        ({**array_vars(0, 3), "SLURM_ARRAY_TASK_ID": "2a"}, "SLURM_ARRAY_TASK_ID='2a' is not an integer"),
        ({**array_vars(0, 3), "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MAX": "3", "SLURM_ARRAY_TASK_COUNT": "3"},
         "SLURM_ARRAY_TASK_COUNT=3 tasks from SLURM_ARRAY_TASK_MIN=0 to SLURM_ARRAY_TASK_MAX=3 (step 1) are not one range"),
        ({**array_vars(0, 3), "SLURM_ARRAY_TASK_ID": "5"}, "SLURM_ARRAY_TASK_ID=5 is task 5 from SLURM_ARRAY_TASK_MIN=0, not below SLURM_ARRAY_TASK_COUNT=3"),
        ({k: v for k, v in array_vars(0, 3).items() if k != "SLURM_ARRAY_TASK_COUNT"}, "SLURM_ARRAY_TASK_COUNT is not set"),
        ({k: v for k, v in array_vars(0, 3).items() if k != "SLURM_ARRAY_JOB_ID"}, "SLURM_ARRAY_JOB_ID is not set"),
    ],
)
def test_a_bad_value_is_a_one_line_config_error_naming_the_variable(env, message):
    with pytest.raises(ConfigError) as caught:
        current_launch(env)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_reports_a_bad_slurm_variable_in_one_line(tmp_path, corpus):
    wd = prepared(tmp_path / "wd", corpus)
    result = invoke("cache", "--workdir", wd, *CACHE, env=cli_env({**srun_vars(0, 2), "SLURM_PROCID": "zero"}))
    assert result.exit_code == 2 and result.output.strip() == "error: SLURM_PROCID='zero' is not an integer", result.output
    assert not (wd / "store" / "cache").exists() or not any((wd / "store" / "cache").iterdir()), "nothing may start"


# --- the cache through the CLI ------------------------------------------------------------------


@pytest.mark.distributed
def test_srun_tasks_split_the_rows_and_rank_zero_commits_the_store_of_one_process(tmp_path, corpus, reference):
    wd = prepared(tmp_path / "wd", corpus)
    procs = [start(wd, srun_vars(rank, 3)) for rank in (2, 1, 0)]  # ranks > 0 first: they wait for rank 0
    rank2, rank1, rank0 = finish(procs)
    assert "cache: done" in rank0 and f"{ROWS - FAILED_ROWS}/{ROWS} segments cached, {FAILED_ROWS} failed" in rank0, rank0
    assert "cache: rank 1/3 finished its rows; rank 0 commits" in rank1 and "cache: rank 2/3 finished its rows" in rank2
    artifact = Workdir(wd).artifacts("cache")[0]
    assert artifact.summary["world_size"] == 3
    assert_same_store(committed_store(wd), reference)


@pytest.mark.distributed
def test_job_array_tasks_that_never_overlap_each_do_their_share_and_the_last_commits(tmp_path, corpus, reference):
    """The scheduler runs one task at a time, in any order: none waits for another; each writes
    its rows and leaves; the one that finds no row pending commits; a task run again later
    (a requeue) finds the artifact."""
    wd = prepared(tmp_path / "wd", corpus)
    shares = {0: "6/6 segments cached, 0 failed", 1: "3/4 segments cached, 1 failed", 2: "3/3 segments cached, 0 failed"}
    outputs = {}
    for i, task in enumerate((2, 0, 1)):
        started = time.monotonic()
        (outputs[task],) = finish([start(wd, array_vars(task, 3))])
        assert time.monotonic() - started < 120
        if i < 2:
            assert f"task {task} of Slurm array job 5151 (rank {task}/3) did its share" in outputs[task], outputs[task]
            assert f"({shares[task]})" in outputs[task] and "segments still pending" in outputs[task]
            assert "the task that finishes last commits" in outputs[task]
            assert Workdir(wd).artifacts("cache") == []
    assert "10 of 13 segments still pending" in outputs[2] and "4 of 13 segments still pending" in outputs[0]
    assert "cache: done" in outputs[1] and f"{ROWS - FAILED_ROWS}/{ROWS} segments cached" in outputs[1], outputs[1]
    assert_same_store(committed_store(wd), reference)
    assert not list((wd / "store" / "cache").glob(".lock-*")), "task locks are given back"
    (again,) = finish([start(wd, array_vars(0, 3))])
    assert "cache: up to date" in again


@pytest.mark.distributed
def test_job_array_tasks_running_at_once_commit_once(tmp_path, corpus, reference):
    wd = prepared(tmp_path / "wd", corpus)
    outputs = finish([start(wd, array_vars(task, 3)) for task in range(3)])
    assert sum("cache: done" in out for out in outputs) == 1, outputs
    assert all("cache: done" in out or "did its share" in out or "up to date" in out for out in outputs), outputs
    assert_same_store(committed_store(wd), reference)


@pytest.mark.distributed
@pytest.mark.parametrize("rerun", ["srun, 2 tasks", "one process"])
def test_a_rerun_with_other_ranks_decodes_exactly_the_rows_left_pending(tmp_path, corpus, reference, rerun):
    """A store part-filled by 3 array tasks of which one never ran (task 1: rows 3-5 of video v1
    and row 12 of the missing one) is finished by 2 srun tasks, or by one process: the rows done
    are not written again, the pending ones are, and the store is the one process's."""
    wd = prepared(tmp_path / "wd", corpus)
    finish([start(wd, array_vars(task, 3)) for task in (0, 2)])
    assert Workdir(wd).artifacts("cache") == []
    assert "incomplete" in invoke("status", "--workdir", wd, env=cli_env({})).output
    (partial,) = (wd / "store" / "cache").glob("*.partial")
    url = str(partial / "frames.zarr")
    pending = np.flatnonzero(FrameStore(url).status() == 0)
    assert pending.tolist() == [3, 4, 5, 12]  # s1's rows and the missing video's
    before = row_files(url)

    if rerun == "one process":
        result = invoke("cache", "--workdir", wd, *CACHE, env=cli_env({}))
        assert result.exit_code == 0, result.output
        summary = Workdir(wd).artifacts("cache")[0].summary
        written = summary["written"]
        assert summary["skipped"] == ROWS - len(pending)
    else:
        outputs = finish([start(wd, srun_vars(rank, 2, step=1), "--verbose") for rank in (1, 0)])
        assert "cache: done" in outputs[1]
        written = sum(int(m) for out in outputs for m in re.findall(r"cache: rank \d+(?:/\d+)?: .*?; (\d+) written", out))
    assert written == len(pending)
    after = row_files(committed_store(wd))  # the partial directory, renamed
    for row, files in before.items():
        if row not in pending:
            assert after[row] == files, f"row {row} was done and was written again"
    assert all(after[row] != before.get(row) for row in pending)
    assert_same_store(committed_store(wd), reference)


# --- the lock between a job array and other launches -----------------------------------------


@pytest.fixture
def toy(monkeypatch):
    from lfvila_cli.stages import STAGES

    monkeypatch.setitem(STAGES, "toy", toy_stage.TOY)
    toy_stage.calls.clear()
    clear_launch_vars(monkeypatch)


def test_a_process_of_another_launch_waits_for_a_running_array_task(tmp_path, toy):
    """A job array's task writing its share holds its own task lock (not the stage's); one
    process building the same artifact meanwhile waits for it instead of writing alongside."""
    from lfvila_cli.pipeline.status import partial_state

    wd = Workdir(tmp_path)
    cfg = resolve_config(toy_stage.TOY)
    key = run_stage(wd, toy_stage.TOY, cfg, {}, dry_run=True, echo=lambda s: None).key
    task = FileLock(task_lock_path(wd, "toy", key, 2), launch="slurm-array:77")
    task.acquire()
    (partial := wd.partial_dir("toy", key)).mkdir(parents=True)
    assert partial_state(wd, partial) == "being built by 1 task(s) of slurm-array:77"
    lines, result = [], {}
    thread = threading.Thread(target=lambda: result.update(r=run_stage(wd, toy_stage.TOY, cfg, {}, echo=lines.append)))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and not toy_stage.calls, "it built alongside a running array task"
    assert any("waiting for pid" in line and "slurm-array:77" in line for line in lines), lines
    task.release()
    thread.join(timeout=30)
    assert not thread.is_alive() and result["r"].status == "done"


def test_training_under_slurm_ranks_needs_a_rendezvous_and_says_so_in_one_line(tmp_path, corpus):
    """pretrain under srun without MASTER_ADDR/MASTER_PORT, or as a job array: one line, before
    any work."""
    wd = prepared(tmp_path / "wd", corpus)
    # 8 frames per segment, the model's clips: a store the model cannot take fails before this
    assert invoke("cache", "--workdir", wd, *CACHE, "--set", "frames_per_segment=8", env=cli_env({})).exit_code == 0
    for slurm, message in [
        (srun_vars(1, 2), "error: pretrain1 under srun (2 tasks) needs a rendezvous: MASTER_ADDR and MASTER_PORT are not set; "
                          "export MASTER_ADDR=$(scontrol show hostnames"),
        ({**srun_vars(0, 2), "MASTER_ADDR": "node1"}, "error: pretrain1 under srun (2 tasks) needs a rendezvous: MASTER_PORT is not set"),
        (array_vars(1, 3), "error: pretrain1: the 3 tasks of a Slurm job array run one by one as resources free up and cannot train together"),
    ]:
        result = invoke("pretrain", "--workdir", wd, env=cli_env(slurm))
        assert result.exit_code == 2 and result.output.startswith(message), result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not list((wd / "store").glob("pretrain1/*")), "nothing may start"


@pytest.mark.distributed
@pytest.mark.slow
def test_srun_tasks_with_a_rendezvous_from_the_job_script_train_together(tmp_path):
    """srun's tasks with MASTER_ADDR/MASTER_PORT (what an sbatch script exports) pre-train as
    two torch.distributed ranks: rank 0 commits once, the run knows its world of 2."""
    from helpers_ranks import free_port

    wd = tmp_path / "wd"
    sizes = ["--set", "example.train_videos=4", "--set", "example.val_videos=1", "--set", "example.test_videos=0", "--set", "example.max_clips=4"]
    assert invoke("prepare", "--workdir", wd, *sizes, env=cli_env({})).exit_code == 0
    assert invoke("cache", "--workdir", wd, "--set", "height=64", "--set", "width=96", env=cli_env({})).exit_code == 0
    quick = ["--set", "train.max_steps=2", "--set", "val_every=0", "--set", "train.micro_batch=1", "--set", "train.precision=fp32"]
    cmd = [sys.executable, "-m", "lfvila_cli.main", "pretrain", "--stage", "1", "--workdir", str(wd), *quick]
    rendezvous = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu", "LFVILA_RANK_WAIT_S": "120"}
    procs = [subprocess.Popen(cmd, env=process_env({**srun_vars(rank, 2), **rendezvous}), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    rank0, rank1 = finish(procs, timeout=300)
    assert "pretrain1: done" in rank0 and "pretrain1: rank 1/2 finished" in rank1, rank0[-2000:] + rank1[-2000:]
    (artifact,) = Workdir(wd).artifacts("pretrain1")
    assert json.loads((artifact.path / "run" / "train_config.json").read_text())["world_size"] == 2


def test_a_training_stage_under_srun_with_a_rendezvous_gets_the_slurm_ranks(tmp_path, toy, monkeypatch):
    """With MASTER_ADDR/MASTER_PORT from the job script, the runner hands srun's ranks to
    torch.distributed (RANK, WORLD_SIZE, LOCAL_RANK) and the launch keeps its Slurm identity."""
    import dataclasses

    for name, value in {**srun_vars(0, 2, job=31, step=4), "SLURM_LOCALID": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    seen = {}

    def body(ctx):
        seen.update({k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}, launch=launch_id(), rank=ctx.rank)
        return {}

    trainer = dataclasses.replace(toy_stage.TOY, distributed=True, resumable=True, run=body)
    wd = Workdir(tmp_path)
    cfg = resolve_config(trainer)
    # rank 0 of 2 builds; the other rank never comes: commit right after the body
    result = run_stage(wd, trainer, cfg, {}, echo=lambda s: None)
    assert result.status == "done"
    assert seen == {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "launch": "slurm:31.4", "rank": 0}


def test_retry_failed_and_any_other_stage_under_a_job_array(tmp_path, corpus):
    """--retry-failed is refused for a job array (a task finishing early would commit rows other
    tasks still have to retry); a stage that does not split its work is built by one task."""
    wd = prepared(tmp_path / "wd", corpus)
    result = invoke("cache", "--workdir", wd, *CACHE, "--retry-failed", env=cli_env(array_vars(1, 3)))
    assert result.exit_code == 2 and result.output.startswith("error: retry_failed under a Slurm job array"), result.output
    again = invoke("prepare", "--source", "jsonl", "--workdir", tmp_path / "wd2", "--set", f"jsonl.path={corpus}", env=cli_env(array_vars(2, 3)))
    assert again.exit_code == 0 and "prepare: done" in again.output, again.output


def test_a_pipeline_under_a_job_array_goes_on_only_in_the_task_that_commits(tmp_path, corpus):
    """`lfvila run` as a job array: prepare is built by one task; a task that did its share of
    the cache stops there (exit 0, no stale `latest` cache for the next stage); the task that
    commits goes on, and training is refused in one line."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "stages:\n"
        f"  - stage: prepare\n    config: {{source: jsonl, jsonl: {{path: {corpus}}}}}\n"
        "  - stage: cache\n    config: {frames_per_segment: 8, height: 32, width: 48, workers: 1, decode_timeout_s: 0, max_failure_rate: 0.5}\n"
        "  - stage: pretrain1\n"
    )
    wd = tmp_path / "wd"
    first = invoke("run", pipeline, "--workdir", wd, env=cli_env(array_vars(0, 2)))
    assert first.exit_code == 0, first.output
    assert "prepare: done" in first.output and "did its share" in first.output
    assert first.output.strip().endswith("cache: the rest of the pipeline runs in the task that commits cache")
    last = invoke("run", pipeline, "--workdir", wd, env=cli_env(array_vars(1, 2)))
    assert "prepare: up to date" in last.output and "cache: done" in last.output, last.output
    assert last.exit_code == 2 and last.output.strip().splitlines()[-1].startswith("error: pretrain1: the 2 tasks of a Slurm job array")
