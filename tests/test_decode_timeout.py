"""Bounded decoding: no video can hang ``lfvila cache``.

A video whose packets all carry pts = dts = 0 makes decord spin forever in C near its end. The
cache decodes in child processes (``video.BoundedVideoDecoder``) that are killed on a timeout.
Everything that could hang runs in a subprocess with a timeout of its own, so a regression
fails here instead of hanging the test run.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_video import make_broken, make_video, make_zero_timestamp_video, sample, write_corpus_file
from lfvila_cli.data.cache import CacheConfig
from lfvila_cli.data.video import (
    BoundedVideoDecoder,
    VideoDecoder,
    VideoError,
    chunk_span,
    decode_process,
    stop_decode_processes,
)

TESTS = Path(__file__).parent
H, W, K = 36, 44, 4
GUARD_S = 150  # a run that takes longer than this is hanging


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    make_video(root / "good.mp4", num_frames=24, seed=1)
    make_video(root / "long.mp4", num_frames=48, height=80, width=64, seed=2)  # portrait: crops rows
    make_broken(root, root / "good.mp4")
    make_zero_timestamp_video(root / "zero_pts.mp4")
    make_zero_timestamp_video(root / "zero_pts_2.mp4", seed=3)
    make_zero_timestamp_video(root / "zero_pts.webm", codec="libvpx-vp9")
    return root


def run_guarded(code: str, *args: str, timeout_s: float = GUARD_S) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a run past ``timeout_s`` is killed and fails the test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"hung: still running after {timeout_s:.0f} s\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    done.pid = proc.pid
    return done


def decode_children_of(pid: int) -> list[int]:
    """Pids of live decode child processes started by ``pid`` (from their command lines)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if "_decode_server(" in cmdline and cmdline.rstrip().endswith(f", {pid})") and state != "Z":
            found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")


# --- parity: the bounded path gives the reference path's bytes -------------------------------------


def test_bounded_decoder_gives_the_same_frames_times_and_reasons_as_the_reference(videos):
    spans = [(0.0, 1.0), (0.4, 2.9), (2.0, 5.0), (None, None), (1.5, 1.6)]
    with decode_process() as process:
        for name in ["good.mp4", "long.mp4"]:
            source = str(videos / name)
            with VideoDecoder(source, H, W) as reference, BoundedVideoDecoder(source, H, W, process, 30) as bounded:
                assert bounded.info == reference.info
                n = 3
                chunks = [chunk_span(reference.info.duration, i, n) for i in range(n)]
                for start, end in spans + chunks:
                    ref_frames, ref_times = reference.span(start, end, K)
                    frames, times = bounded.span(start, end, K)
                    assert frames.dtype == ref_frames.dtype and times.dtype == ref_times.dtype
                    np.testing.assert_array_equal(frames, ref_frames)
                    np.testing.assert_array_equal(times, ref_times)
                with pytest.raises(VideoError) as ref_err:
                    reference.span(9.0, 10.0, K)
                with pytest.raises(VideoError) as err:
                    bounded.span(9.0, 10.0, K)
                assert str(err.value) == str(ref_err.value)
        # the same reasons for videos that do not open
        for name in ["missing.mp4", "text.mp4", "truncated.mp4"]:
            with pytest.raises(VideoError) as ref_err:
                VideoDecoder(str(videos / name), H, W)
            with pytest.raises(VideoError) as err:
                BoundedVideoDecoder(str(videos / name), H, W, process, 30)
            assert str(err.value) == str(ref_err.value)


def test_the_timeout_is_a_policy_field_that_leaves_the_artifact_key_alone():
    from lfvila_cli.data.cache import POLICY_FIELDS
    from lfvila_cli.stages.cache import key_config as cache_key_config

    assert "decode_timeout_s" in POLICY_FIELDS
    assert cache_key_config(CacheConfig(decode_timeout_s=5)) == cache_key_config(CacheConfig())


# --- a hanging video ------------------------------------------------------------------------------

BOUNDED_SPANS = """
import json, sys, time
from lfvila_cli.data.video import BoundedVideoDecoder, VideoError, decode_process

results = []
with decode_process() as process, BoundedVideoDecoder(sys.argv[1], 36, 44, process, 1.5) as decoder:
    for start, end in [(0, 3), (27, 30), (3, 6)]:
        t = time.monotonic()
        pid = process.pid
        try:
            frames, times = decoder.span(start, end, 4)
            results.append({"span": [start, end], "times": times.tolist(), "pid": pid})
        except VideoError as exc:
            results.append({"span": [start, end], "reason": str(exc), "seconds": time.monotonic() - t, "pid": pid})
    results.append({"pid_after": process.pid})
print(json.dumps(results))
"""


def test_a_span_that_hangs_times_out_and_the_next_span_decodes(videos):
    out = run_guarded(BOUNDED_SPANS, str(videos / "zero_pts.mp4"))
    first, stuck, after, end = json.loads(out.stdout)
    assert first["times"] == [0.375, 1.125, 1.875, 2.625]
    assert stuck["reason"] == "decode timed out after 1.5 s" and 1.5 <= stuck["seconds"] < 10
    assert after["times"] == [3.375, 4.125, 4.875, 5.625]  # a fresh child opened the video again
    assert first["pid"] == stuck["pid"] != end["pid_after"]


HANGING_CACHE = """
import json, sys, time
from pathlib import Path
from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.framestore import FrameStore
from lfvila_cli.errors import DataError

corpus, url = Path(sys.argv[1]), sys.argv[2]
cfg = CacheConfig(frames_per_segment=4, height=36, width=44, workers=2, max_failure_rate=0.5, decode_timeout_s=2)
t = time.monotonic()
summary = cache_frames(corpus, cfg, url, progress=False)
summary["elapsed"] = time.monotonic() - t
summary["stored_failures"] = FrameStore(url).failures()
# the failed rows count toward max_failure_rate; a rerun skips them (no decoding, no hang)
cfg.max_failure_rate = 0.1
try:
    cache_frames(corpus, cfg, url, progress=False)
except DataError as exc:
    summary["rerun_error"] = str(exc)
print(json.dumps(summary))
"""


@pytest.mark.slow
@needs_proc
def test_cache_with_hanging_videos_finishes_with_their_stuck_rows_failed(videos, tmp_path):
    """pts = dts = 0: without a bound the two decode threads stick on the last seconds of the
    two mp4s and the run never ends. With it, the stuck rows fail with the timeout reason, the
    rest of those videos and the other videos are cached, and the process exits."""
    records = [
        sample("good", str(videos / "good.mp4"), [(0, 1), (1, 2), (2, 3)]),
        sample("mp4", str(videos / "zero_pts.mp4"), [(0, 3), (27, 30), (3, 6)], duration=30.0),
        sample("mp4_2", str(videos / "zero_pts_2.mp4"), [(24, 27), (0, 3)], duration=30.0),
        sample("webm", str(videos / "zero_pts.webm"), [(0, 3), (29.5, 30)], duration=30.0),
        sample("long", str(videos / "long.mp4"), [(0, 3), (3, 6)], duration=6.0),
    ]
    corpus = write_corpus_file(tmp_path, records)
    out = run_guarded(HANGING_CACHE, str(corpus), str(tmp_path / "frames.zarr"))
    summary = json.loads(out.stdout.strip().splitlines()[-1])

    timeout = "decode timed out after 2 s"
    failed = {(f["sample"], f["segment"]): f["reason"] for f in summary["failures"]}
    # the webm's last frame hangs decord only now and then; otherwise it decodes or fails to
    webm_end = failed.pop(("webm", 1), None)
    assert webm_end in (None, timeout) or webm_end.startswith("decode failed at frames")
    assert failed == {("mp4", 1): timeout, ("mp4_2", 0): timeout}
    assert summary["rows"] == 12 and summary["pending"] == 0 and summary["failed"] == 2 + (webm_end is not None)
    stored = [(f["sample"], f["segment"], f["reason"]) for f in summary["stored_failures"] if f["sample"] != "webm"]
    assert stored == [("mp4", 1, timeout), ("mp4_2", 0, timeout)]
    assert summary["elapsed"] < 60
    assert "segments failed" in summary["rerun_error"] and f"({timeout})" in summary["rerun_error"]
    # the process exited normally (run_guarded checked its exit status) and left no decoder behind
    assert "Traceback" not in out.stderr
    assert decode_children_of(out.pid) == []


KILLED_PARENT = """
import sys
from pathlib import Path
from lfvila_cli.data.cache import CacheConfig, cache_frames

cfg = CacheConfig(frames_per_segment=4, height=36, width=44, workers=1, decode_timeout_s=120)
cache_frames(Path(sys.argv[1]), cfg, sys.argv[2], progress=False)
"""


@pytest.mark.slow
@needs_proc
def test_a_killed_run_leaves_no_decoder_spinning(videos, tmp_path):
    """SIGKILL the cache while its child spins on a hanging span: the child notices its parent
    is gone and exits, instead of spinning on a core for ever."""
    corpus = write_corpus_file(tmp_path, [sample("mp4", str(videos / "zero_pts.mp4"), [(27, 30)], duration=30.0)])
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PARENT, str(corpus), str(tmp_path / "frames.zarr")], env=env)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline:
            time.sleep(0.2)
            children = decode_children_of(proc.pid)
        assert children, "the run started no decode process"
        # spinning: ~1.5 s of CPU to start, then a core's worth per second on the stuck span
        while cpu_seconds(children[0]) < 4.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cpu_seconds(children[0]) >= 4.0, "the decode process is not spinning"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while decode_children_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = decode_children_of(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "a decode process outlived its parent"


def test_stop_decode_processes_stops_the_idle_children(videos):
    with decode_process() as process, BoundedVideoDecoder(str(videos / "good.mp4"), H, W, process, 30) as decoder:
        decoder.span(0, 1, K)
        pid = process.pid
    assert process.alive
    stop_decode_processes()
    assert not process.alive
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
