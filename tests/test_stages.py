import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import toy_stage
from lfvila_cli.errors import ArtifactError, ConfigError
from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.pipeline.runner import run_stage
from lfvila_cli.pipeline.stage import resolve_config
from lfvila_cli.stages import STAGES, artifact_state, run_pipeline

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def toy(monkeypatch):
    monkeypatch.setitem(STAGES, "toy", toy_stage.TOY)
    monkeypatch.setitem(STAGES, "toydown", toy_stage.TOY_DOWN)
    monkeypatch.syspath_prepend(str(TESTS))
    toy_stage.calls.clear()
    yield


def run(wd, stage="toy", inputs=None, lines=None, **overrides):
    cfg = resolve_config(STAGES[stage], overrides=[f"{k}={v}" for k, v in overrides.items()])
    return run_stage(wd, STAGES[stage], cfg, inputs or {}, echo=(lines.append if lines is not None else lambda s: None))


def visible(wd, stage="toy"):
    return [a.key for a in wd.artifacts(stage)]


def test_second_run_is_a_hit_and_does_no_work(tmp_path):
    wd = Workdir(tmp_path)
    lines = []
    first = run(wd, lines=lines)
    assert first.status == "done" and len(toy_stage.calls) == 1
    second = run(wd, lines=lines)
    assert second.status == "up to date" and second.key == first.key
    assert len(toy_stage.calls) == 1, "a cache hit must not run the stage body"
    assert len(lines) == 2 and "up to date" in lines[1] and "\n" not in lines[1]
    assert (first.artifact.path / "out.txt").read_text() == "aaa"
    assert wd.resolve("toy").key == first.key


def test_key_changes_with_config_version_and_raw_input_but_not_policy(tmp_path, monkeypatch):
    wd = Workdir(tmp_path / "wd")
    src = tmp_path / "source.txt"
    src.write_text("one")
    base = run(wd, source_file=str(src)).key
    assert run(wd, source_file=str(src), workers=8).key == base  # policy field
    assert run(wd, source_file=str(src), n=4).key != base  # own config
    src.write_text("two")
    assert run(wd, source_file=str(src)).key != base  # raw input content
    src.write_text("one")
    assert run(wd, source_file=str(src)).key == base
    monkeypatch.setitem(STAGES, "toy", dataclasses.replace(toy_stage.TOY, version=2))
    assert run(wd, source_file=str(src)).key != base  # stage version


def test_input_key_feeds_downstream_key(tmp_path):
    wd = Workdir(tmp_path)
    up1 = run(wd).artifact
    down1 = run(wd, "toydown", inputs={"toy": up1})
    assert (down1.artifact.path / "out.txt").read_text() == "aaa+aaa"
    up2 = run(wd, n=2).artifact
    down2 = run(wd, "toydown", inputs={"toy": up2})
    assert down2.key != down1.key
    assert run(wd, "toydown", inputs={"toy": up1}).status == "up to date"


def test_force_reruns_and_dry_run_does_nothing(tmp_path):
    wd = Workdir(tmp_path)
    cfg = resolve_config(STAGES["toy"])
    lines = []
    dry = run_stage(wd, STAGES["toy"], cfg, {}, dry_run=True, echo=lines.append)
    assert dry.status == "would run" and not toy_stage.calls and not visible(wd)
    first = run_stage(wd, STAGES["toy"], cfg, {}, echo=lines.append)
    forced = run_stage(wd, STAGES["toy"], cfg, {}, force=True, echo=lines.append)
    assert forced.status == "done" and len(toy_stage.calls) == 2 and forced.key == first.key
    assert visible(wd) == [first.key]
    assert run_stage(wd, STAGES["toy"], cfg, {}, dry_run=True, echo=lines.append).status == "up to date"


def test_failure_leaves_no_artifact(tmp_path, monkeypatch):
    wd = Workdir(tmp_path)
    monkeypatch.setenv("TOY_FAIL", "1")
    with pytest.raises(RuntimeError):
        run(wd)
    assert not visible(wd)
    assert not list(wd.stage_dir("toy").iterdir()), "the temporary directory must be removed"
    with pytest.raises(ArtifactError, match="run `lfvila toy` first"):
        wd.resolve("toy")


def test_ranks_waiting_for_a_failed_rank_zero_stop_at_once(tmp_path, monkeypatch):
    """Under a multi-rank launch rank 0's failure reaches the waiting ranks through a marker in
    the store: they stop with its error, not after LFVILA_RANK_WAIT_S. A marker from an earlier
    launch is ignored, and rank 0 clears it when it runs the stage again."""
    import lfvila_cli.pipeline.ranks as ranks

    wd = Workdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TOY_FAIL", "1")
    with pytest.raises(RuntimeError, match="toy failure"):
        run(wd)
    markers = list(wd.stage_dir("toy").glob(".failed-*"))
    assert len(markers) == 1 and json.loads(markers[0].read_text())["error"] == "RuntimeError: toy failure"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(ranks, "RANK_WAIT_S", 60.0)
    started = time.monotonic()
    with pytest.raises(ArtifactError, match=r"rank 1/2: rank 0 failed toy/\w+ \(RuntimeError: toy failure\)"):
        run(wd)
    assert time.monotonic() - started < 5
    # not this launch's failure: written before this rank reached the stage, or by another launch
    monkeypatch.setattr(ranks, "RANK_WAIT_S", 0.3)
    record = json.loads(markers[0].read_text())
    markers[0].write_text(json.dumps({**record, "time": time.time() - 3600}))
    with pytest.raises(ArtifactError, match="did not commit"):
        run(wd)
    markers[0].write_text(json.dumps(record | {"time": time.time()}))
    monkeypatch.setenv("MASTER_PORT", "29999")  # a relaunch on another port
    with pytest.raises(ArtifactError, match="did not commit"):
        run(wd)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("TOY_FAIL")
    assert run(wd).status == "done" and not list(wd.stage_dir("toy").glob(".failed-*"))
    assert [a.key for a in wd.artifacts("toy")] == [run(wd).key]


def test_killed_stage_leaves_no_visible_artifact(tmp_path):
    """SIGKILL in the middle of a stage: nothing is visible; the next run cleans up and commits."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "import toy_stage; toy_stage.register();"
        "from lfvila_cli.pipeline.artifacts import Workdir; from lfvila_cli.stages import STAGES; from lfvila_cli.pipeline.runner import run_stage; from lfvila_cli.pipeline.stage import resolve_config;"
        "run_stage(Workdir(sys.argv[1]), STAGES['toy'], resolve_config(STAGES['toy']), {})"
    )
    env = dict(os.environ, TOY_SLEEP="30")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(TESTS)], env=env)
    marker = tmp_path / "store" / "toy" / "toy-started"
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the stage never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wd = Workdir(tmp_path)
    assert not visible(wd)
    leftovers = [p.name for p in wd.stage_dir("toy").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the dead writer's temporary directory, invisible to readers
    marker.unlink()
    result = run(wd)
    assert result.status == "done"
    assert not [p for p in wd.stage_dir("toy").iterdir() if p.name.startswith(".tmp-")]


def test_refs_names_and_prefixes(tmp_path):
    wd = Workdir(tmp_path)
    cfg = resolve_config(STAGES["toy"])
    first = run_stage(wd, STAGES["toy"], cfg, {}, name="baseline", echo=lambda s: None)
    second = run(wd, n=5)
    assert wd.resolve("toy").key == second.key
    assert wd.resolve("toy", "baseline").key == first.key
    assert wd.resolve("toy", first.key[:8]).key == first.key
    assert wd.resolve("toy", first.key).key == first.key  # the full key, as manifests print it
    with pytest.raises(ArtifactError, match="no 'toy' artifact named"):
        wd.resolve("toy", first.key[:-1] + ("0" if first.key[-1] != "0" else "1"))
    assert wd.resolve("toy", str(first.artifact.path)).key == first.key
    with pytest.raises(ArtifactError, match="no 'toy' artifact named 'nope'"):
        wd.resolve("toy", "nope")


def test_status_marks_stale_inputs(tmp_path):
    wd = Workdir(tmp_path / "wd")
    src = tmp_path / "source.txt"
    src.write_text("one")
    up = run(wd, source_file=str(src)).artifact
    down = run(wd, "toydown", inputs={"toy": up}).artifact
    assert artifact_state(wd, up) == "current" and artifact_state(wd, down) == "current"
    src.write_text("changed")
    assert artifact_state(wd, up).startswith("stale")
    assert "input toy/" in artifact_state(wd, down)


def test_pipeline_chains_and_skips(tmp_path):
    wd = Workdir(tmp_path / "wd")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text("stages:\n  - stage: toy\n    config: {n: 2}\n  - stage: toydown\n    config: {label: b}\n")
    lines = []
    first = run_pipeline(wd, pipe, echo=lines.append)
    assert [r.status for r in first] == ["done", "done"]
    assert (first[1].artifact.path / "out.txt").read_text() == "aa+bbb"
    lines.clear()
    second = run_pipeline(wd, pipe, echo=lines.append)
    assert [r.status for r in second] == ["up to date", "up to date"] and len(lines) == 2
    assert len(toy_stage.calls) == 2
    changed = run_pipeline(wd, pipe, overrides=["toy.n=3"], echo=lines.append)
    assert [r.status for r in changed] == ["done", "done"]
    dry = run_pipeline(wd, pipe, overrides=["toy.n=7"], dry_run=True, echo=lines.append)
    assert [r.status for r in dry] == ["would run", "waiting for input"]



def test_pipeline_entries_name_their_inputs(tmp_path):
    """By default an input is the nearest earlier entry of its stage; an entry's `inputs:` can
    name an earlier one by its `id:` instead. A name that is not an earlier entry of that stage,
    or an input the stage does not take, is a one-line error before anything runs."""
    wd = Workdir(tmp_path / "wd")
    pipe = tmp_path / "pipe.yaml"
    entries = (
        "  - {stage: toy, id: first, config: {n: 2}}\n"
        "  - {stage: toy, config: {n: 1, label: c}}\n"
        "  - {stage: toydown, config: {label: b}}\n"
        "  - {stage: toydown, inputs: {toy: first}, config: {label: d}}\n"
    )
    pipe.write_text("stages:\n" + entries)
    results = run_pipeline(wd, pipe, echo=lambda line: None)
    assert (results[2].artifact.path / "out.txt").read_text() == "c+bbb"  # the nearest earlier toy
    assert (results[3].artifact.path / "out.txt").read_text() == "aa+ddd"  # the one named
    for bad, message in (
        ("  - {stage: toydown, inputs: {toy: later}}\n  - {stage: toy, id: later}\n", r"stages\[0\]\.inputs\.toy: no earlier toy entry with id 'later'"),
        ("  - {stage: toydown, id: x}\n  - {stage: toydown, inputs: {toy: x}}\n", r"stages\[1\]\.inputs\.toy: no earlier toy entry with id 'x'"),
        ("  - {stage: toy, id: x}\n  - {stage: toydown, inputs: {prepare: x}}\n", r"stages\[1\]\.inputs: toydown takes no 'prepare' input"),
        ("  - {stage: toy, id: x}\n  - {stage: toy, id: x}\n", r"stages\[1\]\.id must be a name no other entry has"),
    ):
        pipe.write_text("stages:\n" + bad)
        with pytest.raises(ConfigError, match=message):
            run_pipeline(wd, pipe, echo=lambda line: None)
    assert len(toy_stage.calls) == 4  # the refused pipelines ran nothing

def test_changed_files_make_an_artifact_unusable(tmp_path):
    """The manifest records each file's size and SHA-256: a file changed in place (same size)
    makes `status` call the artifact stale, a rerun rebuild it, and a consumer refuse it."""
    wd = Workdir(tmp_path)
    first = run(wd)
    assert set(first.artifact.manifest["files"]) == {"out.txt", "part1.txt"}
    (first.artifact.path / "out.txt").write_text("bbb")
    assert artifact_state(wd, wd.resolve("toy")) == "stale: out.txt changed after it was written (SHA-256 differs)"
    with pytest.raises(ArtifactError, match=r"^toy/\w+ \(.*\): out.txt changed after it was written .*--force$"):
        run(wd, "toydown", inputs={"toy": wd.resolve("toy")})
    lines = []
    again = run(wd, lines=lines)
    assert again.status == "done" and "is unusable (out.txt changed" in lines[0]
    assert (again.artifact.path / "out.txt").read_text() == "aaa" and artifact_state(wd, again.artifact) == "current"
    (again.artifact.path / "part1.txt").unlink()
    assert artifact_state(wd, wd.resolve("toy")) == "stale: part1.txt is missing"
