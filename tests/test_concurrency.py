"""Several processes on one work directory, kills at bad moments, --force and store ownership.

The lock tests use real processes; the pipeline test runs two real `lfvila run` at once on the
same work directory 4 times (the case that once lost a whole frame store in 3 tries of 13).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import toy_stage
from test_cli import _tiny_corpus
from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.pipeline.locks import FileLock, LockError
from lfvila_cli.main import app
from lfvila_cli.pipeline.runner import run_stage
from lfvila_cli.pipeline.stage import resolve_config
from lfvila_cli.stages import STAGES, status_rows

TESTS = Path(__file__).parent
REPO = TESTS.parent


@pytest.fixture(autouse=True)
def toy(monkeypatch):
    monkeypatch.setitem(STAGES, "toy", toy_stage.TOY)
    monkeypatch.syspath_prepend(str(TESTS))
    toy_stage.calls.clear()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the lock itself --------------------------------------------------------------------------

COUNTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lfvila_cli.pipeline.locks import FileLock
    lock, counter = FileLock(sys.argv[1], heartbeat_s=0.2), Path(sys.argv[2])
    for _ in range(3):
        lock.acquire(poll_s=0.01)
        value = int(counter.read_text())   # read, pause, write: loses counts unless exclusive
        time.sleep(0.01)
        counter.write_text(str(value + 1))
        lock.release()
    """
)


def test_lock_is_exclusive_across_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(tmp_path / ".lock-x"), str(counter)]) for _ in range(6)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    assert counter.read_text() == "18", "two processes held the lock at once"
    assert not (tmp_path / ".lock-x").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name not in ("counter",)], "temporary lock files left behind"


def _plant(path: Path, age_s: float, **fields) -> None:
    record = {"token": "old", "host": "otherhost", "pid": 1, "started": time.time() - age_s, **fields}
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - age_s, time.time() - age_s))


def test_stale_locks_are_judged_by_holder_and_heartbeat(tmp_path):
    import socket

    from lfvila_cli.pipeline.locks import _boot_id

    path = tmp_path / ".lock-x"
    lock = FileLock(path, heartbeat_s=1.0, stale_after_s=60.0)
    here = socket.gethostname()
    # another host: only the heartbeat tells
    _plant(path, 5)
    assert lock.stale_reason(lock.read()) is None
    _plant(path, 90)
    assert "no heartbeat for" in lock.stale_reason(lock.read())
    # this host: a dead pid, a reused pid or a reboot, once the heartbeat has stopped
    _plant(path, 5, host=here, pid=_dead_pid(), boot_id=_boot_id())
    assert "is not running" in lock.stale_reason(lock.read())
    _plant(path, 0, host=here, pid=_dead_pid(), boot_id=_boot_id())
    assert lock.stale_reason(lock.read()) is None, "a fresh heartbeat: perhaps a pid of another namespace"
    _plant(path, 5, host=here, pid=os.getpid(), pid_start="1", boot_id=_boot_id())
    assert "another process now" in lock.stale_reason(lock.read())
    _plant(path, 5, host=here, pid=os.getpid(), boot_id="an-earlier-boot")
    assert "rebooted" in lock.stale_reason(lock.read())
    live = FileLock(tmp_path / ".lock-y")
    live.acquire()
    try:
        assert lock.stale_reason(live.read()) is None
    finally:
        live.release()


def test_a_stale_lock_is_taken_over_and_a_live_one_waited_for(tmp_path, caplog):
    import socket

    path = tmp_path / ".lock-x"
    _plant(path, 5, host=socket.gethostname(), pid=_dead_pid())
    lock = FileLock(path, heartbeat_s=1.0)
    started = time.monotonic()
    lock.acquire()
    assert time.monotonic() - started < 5 and lock.read()["token"] == lock.token
    assert "taking over a stale lock" in caplog.text
    # a live holder in another process: the waiter waits until it lets go
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lfvila_cli.pipeline.locks import FileLock; l = FileLock(sys.argv[1], heartbeat_s=0.2);"
         "l.acquire(); print('held', flush=True); time.sleep(1.5); l.release()", str(tmp_path / ".lock-z")],
        stdout=subprocess.PIPE, text=True,
    )
    lock.release()
    assert holder.stdout.readline().strip() == "held"
    waits = []
    other = FileLock(tmp_path / ".lock-z", heartbeat_s=0.2)
    started = time.monotonic()
    other.acquire(on_wait=waits.append, poll_s=0.05)
    assert time.monotonic() - started > 0.5 and len(waits) == 1 and waits[0]["pid"] == holder.pid
    other.release()
    holder.wait(timeout=30)
    # a holder killed with SIGKILL leaves its lock: taken over once its heartbeat stops
    killed = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lfvila_cli.pipeline.locks import FileLock; l = FileLock(sys.argv[1], heartbeat_s=0.2);"
         "l.acquire(); print('held', flush=True); time.sleep(60)", str(tmp_path / ".lock-k")],
        stdout=subprocess.PIPE, text=True,
    )
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    taker = FileLock(tmp_path / ".lock-k", heartbeat_s=0.2)
    started = time.monotonic()
    taker.acquire(poll_s=0.05)
    assert time.monotonic() - started < 5
    taker.release()


def test_a_holder_notices_a_lost_lock_before_committing(tmp_path):
    lock = FileLock(tmp_path / ".lock-x", heartbeat_s=0.1)
    lock.acquire()
    lock.check()
    _plant(lock.path, 0, token="someone-else")
    with pytest.raises(LockError, match="lost the lock"):
        lock.check()
    lock.release()
    assert lock.path.exists(), "release must not delete another holder's lock"


# --- stages: one builder at a time -------------------------------------------------------------

TOY_RUN = (
    "import sys; sys.path.insert(0, sys.argv[2]);"
    "import toy_stage; toy_stage.register();"
    "from lfvila_cli.pipeline.artifacts import Workdir; from lfvila_cli.stages import STAGES; from lfvila_cli.pipeline.runner import run_stage; from lfvila_cli.pipeline.stage import resolve_config;"
    "force = sys.argv[3:4] == ['--force'];"
    # With START_GATE=DIR N: once imported, wait until N processes are ready, so that they reach
    # the stage together however long each took to import.
    "import os, time, pathlib; gate = os.environ.get('START_GATE');"
    "g = pathlib.Path(gate.split()[0]) if gate else None; g and g.mkdir(parents=True, exist_ok=True); g and (g / str(os.getpid())).touch();"
    "[time.sleep(0.01) for _ in iter(lambda: g is not None and len(list(g.iterdir())) < int(gate.split()[1]), False)];"
    "r = run_stage(Workdir(sys.argv[1]), STAGES['toy'], resolve_config(STAGES['toy']), {}, force=force, echo=lambda s: print(s, flush=True));"
    "print('STATUS', r.status)"
)


def test_two_processes_on_one_stage_build_it_once(tmp_path):
    """Two processes start the same stage at once, 6 times over: one builds, the other waits
    and finds it up to date; the artifact is whole every time."""
    env = dict(os.environ, TOY_SLEEP="0.5", LFVILA_LOCK_HEARTBEAT_S="0.2")
    for attempt in range(6):
        wd = tmp_path / f"wd{attempt}"
        env["START_GATE"] = f"{tmp_path / f'gate{attempt}'} 2"
        procs = [subprocess.Popen([sys.executable, "-c", TOY_RUN, str(wd), str(TESTS)], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=60)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        statuses = sorted(line.split(" ", 1)[1] for out in outputs for line in out.splitlines() if line.startswith("STATUS"))
        assert statuses == ["done", "up to date"], outputs
        assert any("waiting for pid" in out for out in outputs), outputs
        artifacts = Workdir(wd).artifacts("toy")
        assert len(artifacts) == 1 and (artifacts[0].path / "out.txt").read_text() == "aaa"
        assert sorted(p.name for p in Workdir(wd).stage_dir("toy").iterdir()) == [artifacts[0].path.name, "toy-started"]


def test_a_killed_force_run_keeps_the_old_artifact(tmp_path):
    wd = Workdir(tmp_path)
    cfg = resolve_config(STAGES["toy"])
    first = run_stage(wd, STAGES["toy"], cfg, {}, echo=lambda s: None)
    env = dict(os.environ, TOY_SLEEP="30")
    proc = subprocess.Popen([sys.executable, "-c", TOY_RUN, str(tmp_path), str(TESTS), "--force"], env=env, stdout=subprocess.DEVNULL)
    marker = wd.stage_dir("toy") / "toy-started"
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    assert wd.resolve("toy").key == first.key, "the old artifact must stay visible while --force rebuilds"
    assert f"being built by pid {proc.pid}" in invoke("status", "--workdir", tmp_path).output
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert "left by a stopped run" in invoke("status", "--workdir", tmp_path).output
    assert wd.resolve("toy").key == first.key and (wd.resolve("toy").path / "out.txt").read_text() == "aaa"
    rows = status_rows(wd)
    assert [r["state"] for r in rows] == ["current"]


def test_a_commit_killed_between_its_two_renames_is_put_back(tmp_path, monkeypatch):
    """--force moves the old artifact aside, then renames the new one into place; a kill in
    between leaves only the aside copy, which the next reader puts back."""
    wd = Workdir(tmp_path)
    cfg = resolve_config(STAGES["toy"])
    first = run_stage(wd, STAGES["toy"], cfg, {}, echo=lambda s: None)
    real_replace = os.replace

    def killed_after_first_rename(src, dst):
        real_replace(src, dst)
        if Path(dst).name.startswith(".trash-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        run_stage(wd, STAGES["toy"], cfg, {}, force=True, echo=lambda s: None)
    monkeypatch.undo()
    trash = [p for p in wd.stage_dir("toy").iterdir() if p.name.startswith(".trash-")]
    assert trash and not wd.artifact_dir("toy", first.key).exists()
    # the trash is this (live) process's: a reader leaves it alone; once its writer is gone it is restored
    new_name = trash[0].name.rsplit("-", 1)[0] + f"-{_dead_pid()}"
    trash[0].rename(trash[0].with_name(new_name))
    assert wd.resolve("toy").key == first.key
    assert (wd.resolve("toy").path / "out.txt").read_text() == "aaa"


def test_commit_never_replaces_an_artifact_without_force(tmp_path):
    wd = Workdir(tmp_path)
    cfg = resolve_config(STAGES["toy"])
    first = run_stage(wd, STAGES["toy"], cfg, {}, echo=lambda s: None)
    work = wd.new_temp_dir("toy", first.key)
    (work / "out.txt").write_text("worse")
    kept = wd.commit(work, "toy", first.key, {"key": first.key, "stage": "toy"}, {})
    assert (kept.path / "out.txt").read_text() == "aaa" and not work.exists()


# --- the cache: two pipelines at once, store ownership, half-made layouts, leftovers ---------

PIPELINE = """
stages:
  - stage: prepare
    config: {source: example, example: {train_videos: 6, val_videos: 2, test_videos: 2, max_clips: 4, fps: 4}}
  - stage: cache
    config: {frames_per_segment: 2, height: 32, width: 48, workers: 1}
"""


@pytest.mark.slow
def test_two_pipelines_at_once_on_one_work_directory(tmp_path):
    """The reproduction that once lost a frame store (3 tries of 13): `lfvila run p.yaml -w W`
    twice at once. Every try: both exit 0, one cache artifact, its store whole and current."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE)
    cmd = [sys.executable, "-m", "lfvila_cli.main", "run", str(pipeline), "--workdir"]
    env = dict(os.environ, LFVILA_LOCK_HEARTBEAT_S="0.5")
    for attempt in range(4):
        wd = tmp_path / f"wd{attempt}"
        procs = [subprocess.Popen([*cmd, str(wd)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        joined = "\n".join(outputs)
        assert joined.count("cache: done") == 1 and joined.count("cache: up to date") == 1, joined
        assert joined.count("prepare: done") == 1, joined
        workdir = Workdir(wd)
        (cache,) = workdir.artifacts("cache")
        assert (cache.path / "frames.zarr" / "zarr.json").is_file()
        assert [r["state"] for r in status_rows(workdir)] == ["current", "current"]
        from lfvila_cli.data.framestore import FrameStore

        store = FrameStore(cache.path / "frames.zarr")
        assert store.status_counts()["ok"] == cache.summary["rows"] > 0
        # nothing else left behind (the frame pool, shared by every cache, aside)
        assert not [p.name for p in workdir.stage_dir("cache").iterdir() if p.name not in (cache.path.name, ".frames")]


def test_force_deletes_no_store_of_another_work_directory(tmp_path):
    store = tmp_path / "shared.zarr"
    owner_wd, other_wd = tmp_path / "a", tmp_path / "b"
    args = _tiny_corpus(tmp_path, owner_wd)
    _tiny_corpus(tmp_path, other_wd)
    assert invoke("cache", "--workdir", owner_wd, "--store-url", store, *args).exit_code == 0
    chunks = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    # the same corpus and store: the other work directory may read the finished store ...
    assert invoke("cache", "--workdir", other_wd, "--store-url", store, *args).exit_code == 0
    # ... but not delete it
    forced = invoke("cache", "--workdir", other_wd, "--store-url", store, *args, "--force")
    assert forced.exit_code != 0 and len(forced.output.strip().splitlines()) == 1, forced.output
    assert "belongs to cache artifact" in forced.output and str(owner_wd.resolve()) in forced.output
    assert "--force will not delete" in forced.output
    assert sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file()) == chunks
    assert "current" in invoke("status", "--workdir", owner_wd).output
    # another config asking for the same store: the mismatch error does not suggest --force
    other = invoke("cache", "--workdir", other_wd, "--store-url", store, "--set", "frames_per_segment=3", "--set", "height=32", "--set", "width=48")
    assert other.exit_code != 0 and "belongs to" in other.output and "--force" not in other.output
    # the owner itself may rebuild it
    assert invoke("cache", "--workdir", owner_wd, "--store-url", store, *args, "--force").exit_code == 0


def test_a_half_created_store_layout_is_completed(tmp_path):
    """A kill while the store's attributes were written left some of them and no ``ready``: a
    rerun recognises the layout as its own and creates it again."""
    from helpers_video import make_video

    from lfvila_cli.data.cache import CacheConfig, cache_frames
    from lfvila_cli.data.framestore import open_group

    video = make_video(tmp_path / "v.mp4")
    corpus = tmp_path / "c" / "samples.jsonl"
    corpus.parent.mkdir()
    segs = [{"start": 0.0, "end": 1.0, "text": "a"}, {"start": 1.0, "end": 2.0, "text": "b"}]
    corpus.write_text(json.dumps({"id": "v", "video": str(video), "duration": 3.0, "split": "train", "segments": segs}) + "\n")
    url = str(tmp_path / "frames.zarr")
    group = open_group(url, mode="a")
    group.create_array("status", shape=(2,), chunks=(1,), dtype="uint8")
    group.attrs["layout_version"] = 1
    group.attrs["frames_per_segment"] = 2
    (tmp_path / "frames.zarr" / "zarr.0123456789abcdef0123456789abcdef.partial").write_text("{")  # a torn write of zarr.json
    summary = cache_frames(corpus, CacheConfig(frames_per_segment=2, height=32, width=48, workers=1), url, progress=False)
    assert summary["ok"] == 2


def test_temporary_files_of_killed_writers_do_not_reach_the_artifact(tmp_path):
    wd = tmp_path / "wd"
    args = _tiny_corpus(tmp_path, wd)
    store_dir = wd / "store" / "cache"
    # a run killed mid-write: its partial store with a chunk being written and a manifest temp
    import lfvila_cli.data.cache as cache_module

    real = cache_module.cache_frames

    def killed(*a, **k):
        real(*a, **k)
        partial = next(store_dir.glob("*.partial"))
        (partial / "frames.zarr" / "frames" / "c" / "0" / "0.0123456789abcdef0123456789abcdef.partial").write_bytes(b"torn")
        (partial / ".manifest.json.4242.tmp").write_text("{")
        raise KeyboardInterrupt

    cache_module.cache_frames = killed
    try:
        assert invoke("cache", "--workdir", wd, *args).exit_code == 130
    finally:
        cache_module.cache_frames = real
    result = invoke("cache", "--workdir", wd, *args)
    assert result.exit_code == 0 and "resuming" in result.output
    (artifact,) = Workdir(wd).artifacts("cache")
    leftovers = [p for p in artifact.path.rglob("*") if p.name.endswith(".partial") or p.name.endswith(".tmp")]
    assert not leftovers


def test_retry_failed_after_a_fix_reuses_the_decoded_rows(tmp_path):
    """A missing video restored: its fingerprint changes, so does the cache key. With
    --retry-failed the new store starts from the earlier one: only the restored video's rows
    are decoded; the earlier artifact's store stays as it was."""
    from helpers_video import make_video

    from lfvila_cli.data.framestore import FrameStore

    wd = tmp_path / "wd"
    good = make_video(tmp_path / "good.mp4")
    lines = []
    for name, path in (("good", good), ("late", tmp_path / "late.mp4")):
        segs = [{"start": i * 0.5, "end": (i + 1) * 0.5, "text": f"part {i}"} for i in range(4)]
        lines.append(json.dumps({"id": name, "video": str(path), "duration": 3.0, "split": "train", "segments": segs}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    assert invoke("prepare", "--source", "jsonl", "--workdir", wd, "--set", f"jsonl.path={corpus}").exit_code == 0
    args = ["cache", "--workdir", wd, "--set", "frames_per_segment=2", "--set", "height=32", "--set", "width=48", "--max-failure-rate", "0.9"]
    assert "4/8 segments cached, 4 failed" in invoke(*args).output
    first = Workdir(wd).resolve("cache")
    shutil.copy(good, tmp_path / "late.mp4")
    again = invoke(*args, "--retry-failed")
    assert again.exit_code == 0 and "8/8 segments cached" in again.output, again.output
    second = Workdir(wd).resolve("cache")
    assert second.key != first.key
    assert second.summary["written"] == 4 and second.summary["skipped"] == 4
    assert FrameStore(second.path / "frames.zarr").status_counts() == {"pending": 0, "ok": 8, "failed": 0}
    assert FrameStore(first.path / "frames.zarr").status_counts() == {"pending": 0, "ok": 4, "failed": 4}
    frames, _ = FrameStore(second.path / "frames.zarr").sample("late")
    assert np.array_equal(frames, FrameStore(second.path / "frames.zarr").sample("good")[0])


def test_other_ranks_start_only_once_their_own_launch_holds_the_lock(tmp_path, monkeypatch):
    """Ranks > 0 of a resumable stage write into its partial work: they wait while the lock is
    another process's (and find the artifact it commits), and start once rank 0 of their own
    launch holds it."""
    import dataclasses
    import threading

    from lfvila_cli.pipeline.ranks import launch_id as _launch_id

    stage = dataclasses.replace(toy_stage.TOY, resumable=True)
    monkeypatch.setitem(STAGES, "toy", stage)
    wd = Workdir(tmp_path)
    cfg = resolve_config(stage)
    key = run_stage(wd, stage, cfg, {}, dry_run=True, echo=lambda s: None).key
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29611")

    def commit_as_rank_zero():
        work = wd.new_temp_dir("toy", key)
        (work / "out.txt").write_text("aaa")
        wd.commit(work, "toy", key, {"key": key, "stage": "toy", "summary": {"length": 3}}, {})

    for launch, body_runs in (("10.0.0.9|29500||", False), (_launch_id(), True)):
        holder = FileLock(wd.lock_path("toy", key), launch=launch)
        holder.acquire()
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=run_stage(wd, stage, cfg, {}, echo=lambda s: None)))
        thread.start()
        time.sleep(1.0)
        assert bool(toy_stage.calls) == body_runs
        commit_as_rank_zero()
        holder.release()
        thread.join(timeout=30)
        assert not thread.is_alive() and result["r"].status == "up to date"
        shutil.rmtree(wd.artifact_dir("toy", key))
        shutil.rmtree(wd.partial_dir("toy", key), ignore_errors=True)
        toy_stage.calls.clear()


def test_a_holder_on_another_host_is_judged_by_its_heartbeat_alone(tmp_path):
    """A real process under another host name (its own UTS namespace, as a node of a cluster
    sharing the work directory over NFS would be): alive, its lock is respected; killed, its lock
    is taken over only once its heartbeat has been silent for LFVILA_LOCK_STALE_S."""
    import shutil as sh

    if sh.which("unshare") is None or subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode != 0:
        pytest.skip("no permission for a UTS namespace here")
    path = tmp_path / ".lock-x"
    code = (
        "import sys, time; from lfvila_cli.pipeline.locks import FileLock; l = FileLock(sys.argv[1], heartbeat_s=0.2);"
        "l.acquire(); print('held', flush=True); time.sleep(120)"
    )
    remote = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", f'hostname othernode && exec "{sys.executable}" -c "$0" "$1"', code, str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert remote.stdout.readline().strip() == "held"
        lock = FileLock(path, heartbeat_s=0.2, stale_after_s=2.0)
        assert lock.read()["host"] == "othernode"
        time.sleep(1.0)
        assert lock.stale_reason(lock.read()) is None, "a live holder on another host keeps its lock"
    finally:
        remote.kill()
        remote.wait()
    started = time.monotonic()
    lock.acquire(poll_s=0.05)
    waited = time.monotonic() - started
    lock.release()
    assert 1.0 < waited < 10.0, waited  # not at once (its pid means nothing here), not never


def test_other_ranks_of_a_forced_stage_wait_for_the_new_artifact(tmp_path, monkeypatch):
    """--force under a multi-rank launch: the old artifact stays visible while rank 0 rebuilds,
    so the other ranks must wait for the new commit, not take the old one."""
    import threading

    wd = Workdir(tmp_path)
    cfg = resolve_config(STAGES["toy"])
    first = run_stage(wd, STAGES["toy"], cfg, {}, echo=lambda s: None)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=run_stage(wd, STAGES["toy"], cfg, {}, force=True, echo=lambda s: None)))
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive(), "rank 1 took the artifact rank 0 is replacing"
    work = wd.new_temp_dir("toy", first.key)
    (work / "out.txt").write_text("new")
    wd.commit(work, "toy", first.key, {"key": first.key, "stage": "toy", "created": time.time(), "summary": {}}, {}, replace=True)
    thread.join(timeout=30)
    assert not thread.is_alive() and (result["r"].artifact.path / "out.txt").read_text() == "new"
