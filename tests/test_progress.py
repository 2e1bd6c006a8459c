"""Progress off a terminal (log lines at a fixed interval, lfvila_cli.progress) and the optional
TensorBoard event files of training runs (train.tensorboard, lfvila_cli.train.events)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lfvila_cli.errors import ConfigError
from lfvila_cli.main import app
from lfvila_cli.progress import ProgressLog, duration, interval_s

EXAMPLE = ["--set", "example.train_videos=8", "--set", "example.val_videos=1", "--set", "example.test_videos=0",
           "--set", "example.min_clips=4", "--set", "example.max_clips=4", "--set", "example.height=64",
           "--set", "example.width=96", "--set", "example.qa_per_video=0"]
FRAMES = ["--set", "frames_per_segment=8", "--set", "height=64", "--set", "width=96"]
TRAIN = ["--set", "train.max_steps=3", "--set", "train.micro_batch=4", "--set", "val_every=2"]
NUMBER = r"[-+0-9.e]+"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard reads the event files of ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny stage-1 run through the CLI in a subprocess, stderr redirected to a file (no
    terminal), a progress line per step (LFVILA_PROGRESS_S=0), TensorBoard on."""
    root = tmp_path_factory.mktemp("progress")
    wd = root / "wd"
    assert invoke("prepare", "--source", "example", "--workdir", wd, *EXAMPLE).exit_code == 0
    assert invoke("cache", "--workdir", wd, *FRAMES).exit_code == 0
    with open(root / "stderr.txt", "w") as err, open(root / "stdout.txt", "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "lfvila_cli.main", "pretrain", "--stage", "1", "--workdir", str(wd), *TRAIN,
             "--set", "train.tensorboard=true"],
            stdout=out, stderr=err, env={**os.environ, "LFVILA_PROGRESS_S": "0", "OMP_NUM_THREADS": "1"}, timeout=300,
        )
    stderr = (root / "stderr.txt").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    artifact = next((wd / "store" / "pretrain1").glob("*/manifest.json")).parent
    return {"wd": wd, "artifact": artifact, "stderr": stderr, "stdout": (root / "stdout.txt").read_text()}


def test_training_off_a_terminal_logs_progress_lines(trained):
    """Each line: step/total, the total loss, each term and lr from the step's record (as
    metrics.jsonl has it), samples/s over the run so far, and the time left; the last line says
    how long it took."""
    lines = [line for line in trained["stderr"].splitlines() if "train: step" in line]
    assert len(lines) == 3, trained["stderr"][-3000:]
    steps = [r for r in _records(trained["artifact"] / "metrics.jsonl") if r["split"] == "train"]
    for line, record in zip(lines, steps):
        n = record["step"]
        end = rf"about \d+m\d\ds left" if n < 3 else rf"done in \d+m\d\ds"
        pattern = (rf"INFO lfvila_cli\.progress: train: step {n}/3 \({100 * n / 3:.0f}%\), loss ({NUMBER}) "
                   rf"\(vpc ({NUMBER}), mtc ({NUMBER})\), lr ({NUMBER}), ({NUMBER}) samples/s, {end}")
        match = re.fullmatch(pattern, line)
        assert match, line
        total, vpc, mtc, lr, rate = map(float, match.groups())
        assert total == pytest.approx(record["loss/total"], rel=1e-3)
        assert (vpc, mtc) == (pytest.approx(record["loss/vpc"], rel=1e-3), pytest.approx(record["loss/mtc"], rel=1e-3))
        assert lr == pytest.approx(record["lr"], rel=1e-2)
        # the run's pace, loading included, never beats its fastest step
        assert 0 < rate <= max(r["samples_per_s"] for r in steps[:n]) * 1.01 + 0.05
    assert "train: step" not in trained["stdout"]  # stdout keeps the stage's one line
    assert trained["stdout"].startswith("pretrain1: done")


def test_tensorboard_event_files_hold_the_metrics(trained):
    """run/tensorboard/ beside metrics.jsonl: every logged step's loss terms, lr, gradient norm and
    samples/s, and the validation figures, at their steps, as TensorBoard reads them."""
    scalars = _scalars(trained["artifact"] / "run" / "tensorboard")
    records = _records(trained["artifact"] / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    for key in ("loss/total", "loss/vpc", "loss/mtc", "lr", "grad_norm", "samples_per_s"):
        got = scalars[f"train/{key}"]
        assert [step for step, _ in got] == [1, 2, 3], key
        assert [value for _, value in got] == pytest.approx([r[key] for r in train], rel=1e-6), key
    assert [step for step, _ in scalars["val/R@1"]] == [r["step"] for r in val] == [2, 3]
    assert [v for _, v in scalars["val/temporal_order_accuracy"]] == pytest.approx([r["temporal_order_accuracy"] for r in val])


def test_a_resumed_run_rewrites_the_steps_past_its_checkpoint(trained, tmp_path):
    """A run killed after its step-2 checkpoint and resumed with another lr: TensorBoard shows
    each step once, steps 3-4 from the resumed run (the killed attempt's are dropped)."""
    import shutil

    from lfvila_cli.data.loader_config import LoaderConfig
    from lfvila_cli.pipeline.artifacts import Workdir
    from lfvila_cli.stages.cache import corpus_of, frame_store_url
    from lfvila_cli.train.config import PretrainConfig, TrainConfig
    from lfvila_cli.train.pretrain import run_pretrain

    wd = Workdir(trained["wd"])
    cache = wd.resolve("cache")
    corpus, store = corpus_of(wd, cache), frame_store_url(cache)

    def config(lr: float) -> PretrainConfig:
        train = TrainConfig(lr=lr, micro_batch=4, max_steps=4, precision="fp32", checkpoint_every=2, tensorboard=True)
        return PretrainConfig(loader=LoaderConfig(max_tokens=16), train=train, val_every=0, workers=0)

    out = tmp_path / "s1"
    run_pretrain(config(5e-4), corpus, store, out, progress=False)
    first = _scalars(out / "run" / "tensorboard")["train/lr"]
    shutil.rmtree(out / "run" / "checkpoints" / "step_00000004")  # as if killed before the last save
    run_pretrain(config(1e-4), corpus, store, out, progress=False, resume="auto")
    lrs = _scalars(out / "run" / "tensorboard")["train/lr"]
    expected = [(r["step"], r["lr"]) for r in _records(out / "metrics.jsonl") if r["split"] == "train"]
    assert [step for step, _ in lrs] == [1, 2, 3, 4]
    assert lrs == [(step, pytest.approx(lr, rel=1e-6)) for step, lr in expected]
    assert lrs[:2] == first[:2] and lrs[3][1] != pytest.approx(first[3][1])


def test_tensorboard_without_the_package_is_a_one_line_error_before_training(trained, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # ``import tensorboard`` raises ImportError
    result = invoke("pretrain", "--stage", "1", "--workdir", trained["wd"], *TRAIN, "--set", "train.tensorboard=true",
                    "--set", "train.seed=7")
    assert result.exit_code == 2
    assert result.output == (
        "error: config key 'train.tensorboard': the tensorboard package is not installed "
        "(pip install 'lfvila[tensorboard]', or set train.tensorboard=false)\n"
    )
    # nothing of the run was made: no tokenizer trained, no checkpoint, no run directory
    assert len(list(trained["wd"].rglob("tokenizer_config.json"))) == 1  # the fixture's model
    assert [p.parent.parent for p in trained["wd"].rglob("train_config.json")] == [trained["artifact"]]


def test_tensorboard_keys_the_artifact_only_when_set():
    """Unset, the training config keys as before the option existed; set, the run is its own
    artifact (the event files are part of it)."""
    from lfvila_cli.stages.finetune import key_config as finetune_key
    from lfvila_cli.stages.pretrain import key_config as pretrain_key
    from lfvila_cli.train.config import FinetuneConfig, PretrainConfig

    for config, key in ((PretrainConfig(), pretrain_key), (FinetuneConfig(), finetune_key)):
        plain = key(config)
        assert "tensorboard" not in plain["train"] and plain["train"]["lr"] == config.train.lr
        config.train.tensorboard = True
        assert key(config)["train"] == {**plain["train"], "tensorboard": True}


# --------------------------------------------------------------------------- the shared clock


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("LFVILA_PROGRESS_S", raising=False)
    assert interval_s() == 30.0
    monkeypatch.setenv("LFVILA_PROGRESS_S", "2.5")
    assert interval_s() == 2.5
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv("LFVILA_PROGRESS_S", bad)
        with pytest.raises(ConfigError, match="LFVILA_PROGRESS_S="):
            interval_s()


def test_a_resumed_count_rates_only_this_runs_work():
    lines = ProgressLog(total=10, enabled=True, done=4, interval=0.0)
    lines.started = time.monotonic() - 4.0  # 4 s into this run
    assert lines.advance(2)
    assert lines.counted() == "6/10 (60%)" and lines.counted("videos") == "6/10 videos (60%)"
    assert lines.rate() == pytest.approx(0.5, rel=0.01)  # 2 units in 4 s, not 6
    assert lines.left() == "0m08s"  # 4 units left at 0.5/s
    assert ProgressLog(total=10, enabled=True, interval=0.0).left() == "?"


def test_no_line_while_a_bar_shows_or_before_the_interval():
    assert not ProgressLog(total=3, enabled=False, interval=0.0).advance(1)
    waiting = ProgressLog(total=3, enabled=True, interval=3600.0)
    assert not waiting.advance(1)
    waiting.last -= 3600.0
    assert waiting.advance(1)


def test_durations():
    assert (duration(0), duration(187), duration(3725), duration(float("nan"))) == ("0m00s", "3m07s", "1h02m", "?")
