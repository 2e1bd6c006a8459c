"""The command line through Typer's runner: prepare, status, errors, dry runs."""

import json
import shlex
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lfvila_cli.data.framestore import FrameStore
from lfvila_cli.main import app

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
TINY = ["--set", "example.train_videos=2", "--set", "example.val_videos=1", "--set", "example.test_videos=1", "--set", "example.max_clips=4"]


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def test_help_is_instant_and_imports_no_heavy_library():
    code = (
        "import sys; from typer.testing import CliRunner; from lfvila_cli.main import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('torch', 'zarr', 'decord', 'transformers', 'deepspeed', 'numpy') if m in sys.modules];"
        "assert not heavy, heavy; print(r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for command in ("prepare", "cache", "run", "status"):
        assert command in out


def test_prepare_example_then_hit(tmp_path, monkeypatch):
    wd = tmp_path / "wd"
    first = invoke("prepare", "--source", "example", "--workdir", wd, *TINY)
    assert first.exit_code == 0, first.output
    assert "prepare: done" in first.output
    stats = json.loads(next((wd / "store" / "prepare").glob("*/stats.json")).read_text())
    assert stats["samples"] == 2 + 2 + 2  # val/test videos come with their reordered twins
    assert stats["task_files"]["how2qa.jsonl"] > 0

    # A hit must not touch the stage body: make the body explode and run again.
    import lfvila_cli.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "prepare", lambda *a, **k: pytest.fail("a hit ran the stage"))
    second = invoke("prepare", "--source", "example", "--workdir", wd, *TINY)
    assert second.exit_code == 0, second.output
    assert second.output.count("\n") == 1 and "up to date" in second.output

    listing = invoke("status", "--workdir", wd)
    assert listing.exit_code == 0 and "current" in listing.output and "[latest]" in listing.output


def test_config_errors_are_one_line_and_exit_2(tmp_path):
    result = invoke("prepare", "--workdir", tmp_path, "--set", "example.nope=1")
    assert result.exit_code == 2
    assert result.output.strip() == "error: unknown config key 'example.nope' (known at this level: " + ", ".join(
        sorted(["seed", "train_videos", "val_videos", "test_videos", "min_clips", "max_clips", "clip_seconds", "fps", "height", "width", "qa_per_video", "task"])
    ) + ")"
    wrong_type = invoke("prepare", "--workdir", tmp_path, "--set", "example.fps=fast")
    assert wrong_type.exit_code == 2 and "'example.fps': expected int" in wrong_type.output
    assert len(wrong_type.output.strip().splitlines()) == 1
    missing = invoke("prepare", "--source", "hdvila", "--workdir", tmp_path)
    assert missing.exit_code == 2 and "hdvila.metadata" in missing.output


def test_debug_variable_shows_the_traceback(tmp_path):
    result = invoke("prepare", "--workdir", tmp_path, "--set", "example.nope=1", env={"LFVILA_DEBUG": "1"})
    assert result.exit_code == 2 and "Traceback" in result.output and "ConfigError: unknown config key 'example.nope'" in result.output


def test_strict_prepare_fails_and_leaves_nothing(tmp_path):
    wd = tmp_path / "wd"
    args = ["prepare", "--source", "jsonl", "--workdir", wd, "--set", f"jsonl.path={FIXTURES / 'jsonl' / 'corpus.jsonl'}"]
    lenient = invoke(*args, "--dry-run")
    assert lenient.exit_code == 0 and "would run" in lenient.output
    assert not (wd / "store").exists() or not any((wd / "store").rglob("manifest.json"))
    strict = invoke(*args, "--strict")
    assert strict.exit_code == 1 and strict.output.startswith("error: --strict:")
    assert not any((wd / "store").rglob("manifest.json")), "a failed prepare must leave no artifact"
    assert not [p for p in (wd / "store" / "prepare").iterdir()], "nor a temporary directory"
    ok = invoke(*args)
    assert ok.exit_code == 0 and "rejected" in ok.output


def test_malformed_file_names_file_and_line(tmp_path):
    result = invoke("prepare", "--source", "jsonl", "--workdir", tmp_path, "--set", f"jsonl.path={FIXTURES / 'jsonl' / 'broken.jsonl'}")
    assert result.exit_code == 1
    assert "broken.jsonl:" in result.output and len(result.output.strip().splitlines()) == 1


def test_cache_without_corpus_says_what_to_run(tmp_path):
    result = invoke("cache", "--workdir", tmp_path)
    assert result.exit_code == 1 and "run `lfvila prepare` first" in result.output


def _corpus_with_broken_videos(tmp_path):
    from helpers_video import make_broken, make_video

    good = make_video(tmp_path / "videos" / "good.mp4")
    broken = make_broken(tmp_path / "videos", good)
    lines = []
    for name, path in [("good", good), ("missing", broken["missing"]), ("text", broken["text"])]:
        segs = [{"start": i * 0.5, "end": (i + 1) * 0.5, "text": f"part {i}"} for i in range(4)]
        lines.append(json.dumps({"id": name, "video": str(path), "duration": 3.0, "split": "train", "segments": segs}))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    return corpus


def test_cache_through_cli_records_broken_videos(tmp_path):
    wd = tmp_path / "wd"
    corpus = _corpus_with_broken_videos(tmp_path)
    assert invoke("prepare", "--source", "jsonl", "--workdir", wd, "--set", f"jsonl.path={corpus}").exit_code == 0
    small = ["--set", "frames_per_segment=2", "--set", "height=32", "--set", "width=48"]
    failed = invoke("cache", "--workdir", wd, *small)
    assert failed.exit_code == 1
    message = failed.output.strip().splitlines()[-1]
    assert message.startswith("error:") and "missing.mp4" in message and "text.mp4" in message
    assert not list((wd / "store" / "cache").glob("*/manifest.json")), "over the threshold nothing is committed"
    # The failed rows are recorded: a rerun with a looser threshold commits without decoding again.
    ok = invoke("cache", "--workdir", wd, *small, "--max-failure-rate", "0.9")
    assert ok.exit_code == 0, ok.output
    assert "4/12 segments cached, 8 failed" in ok.output
    from lfvila_cli.pipeline.artifacts import Workdir
    from lfvila_cli.stages.cache import frame_store_url

    store = FrameStore(frame_store_url(Workdir(wd).resolve("cache")))
    frames, times = store.sample("good")
    assert frames.shape == (4, 2, 32, 48, 3) and times.shape == (4, 2)
    assert {f["sample"] for f in store.failures()} == {"missing", "text"}


def test_quickstart_pipeline_end_to_end(tmp_path):
    pipeline = Path(__file__).parents[1] / "stages" / "quickstart.yaml"
    tiny = [
        "--set", "prepare.example.train_videos=4", "--set", "prepare.example.val_videos=1", "--set", "prepare.example.test_videos=1",
        "--set", "pretrain1.train.micro_batch=2", "--set", "pretrain1.train.epochs=1", "--set", "pretrain1.val_every=0",
        "--set", "pretrain2.train.micro_batch=2", "--set", "pretrain2.train.epochs=1",
        "--set", "finetune.train.micro_batch=2", "--set", "finetune.train.epochs=1", "--set", "finetune.val_every=0",
    ]
    stages = ["prepare", "cache", "pretrain1", "pretrain2", "cache", "evaluate", "finetune", "evaluate", "export", "index",
              "prepare", "cache", "finetune", "evaluate"]
    first = invoke("run", pipeline, "--workdir", tmp_path, *tiny)
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert [line.split(":")[0] for line in lines[: len(stages)]] == stages
    assert "0 failed" in lines[1]
    # Stage 1 reports retrieval with its chance level (2 val videos: the base and its twin) and order.
    assert "val R@1" in lines[2] and "(chance 0.500)" in lines[2] and "temporal-order accuracy" in lines[2]
    assert "mlm accuracy" in lines[3] and "vtm accuracy" in lines[3]
    assert "activitynet test zero-shot: text→video R@1" in lines[5] and "(chance R@1 0.500, 2 videos)" in lines[5]
    assert "activitynet: 2 steps, selected step" in lines[6] and "how2qa: " in lines[12]
    assert "video + text encoders (fp32), 32 frames at 64×96" in lines[8] and "ranking same" in lines[8]
    assert "videos indexed with onnx" in lines[9]
    assert "how2qa test: accuracy" in lines[13] and "(chance 0.250, 12 items)" in lines[13]
    # The How2QA-shaped corpus asks for the same chunks of the same videos as the retrieval one:
    # its cache stores none of its frames again, and survives deleting the retrieval cache.
    shared = re.search(r"cache: done \((\w+)\) .* (\d+)/(\d+) segments cached, 0 failed, (\d+) shared with earlier caches", lines[11])
    assert shared and shared.group(2) == shared.group(3) == shared.group(4), lines[11]
    retrieval_cache = re.search(r"cache: done \((\w+)\)", lines[4]).group(1)
    qa = invoke("export", "--onnx", "--from", "finetune", "--workdir", tmp_path, "--set", "frames=32", "--set", "height=64", "--set", "width=96")
    assert qa.exit_code == 0 and "multiple-choice QA model (fp32)" in qa.output and "predictions same" in qa.output, qa.output
    # The three report tables follow, each with the paper's row (retrieval) and chance.
    tail = "\n".join(lines[len(stages):])
    assert tail.count("(full report: ") == 3 and tail.count("| chance |") == 3
    assert "| LF-VILA (paper), text → video | 35.3 | 65.4 |" in tail and "dual softmax" in tail
    found = invoke("search", "the red circle grows.", "the red circle moves to the left.", "--top-k", "2", "--workdir", tmp_path)
    assert found.exit_code == 0, found.output
    assert found.output.startswith("1. ") and "\n2. " in found.output and found.output.count("     clip ") == 4
    second = invoke("run", pipeline, "--workdir", tmp_path, *tiny)
    lines = second.output.strip().splitlines()
    assert all("up to date" in line for line in lines[: len(stages)]), lines
    changed = invoke("run", pipeline, "--workdir", tmp_path, *tiny, "--set", "cache.height=32", "--dry-run")
    assert "prepare: up to date" in changed.output and "cache: would run" in changed.output
    assert "pretrain1: would run after cache" in changed.output
    seed = invoke("run", pipeline, "--workdir", tmp_path, *tiny, "--set", "prepare.example.seed=1", "--dry-run")
    assert "prepare: would run" in seed.output and "cache: would run after prepare" in seed.output
    shutil.rmtree(tmp_path / "store" / "cache" / retrieval_cache)
    how2qa_store = FrameStore(tmp_path / "store" / "cache" / shared.group(1) / "frames.zarr")
    assert all(how2qa_store.sample(i)[0].shape[0] == 4 for i in how2qa_store.sample_ids)


def test_force_restarts_an_external_store(tmp_path):
    wd = tmp_path / "wd"
    small = _tiny_corpus(tmp_path, wd)
    store = tmp_path / "external.zarr"
    args = ["cache", "--workdir", wd, "--store-url", store, *small]
    assert invoke(*args).exit_code == 0
    marker = store / "stale-marker"
    marker.write_text("left by the first run")
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0 and "4/4 segments cached" in forced.output
    assert not marker.exists(), "--force must rebuild the external store, not resume it"


@pytest.mark.distributed
def test_two_rank_launch_through_the_cli_commits_once(tmp_path):
    """RANK/WORLD_SIZE as torchrun sets them: both ranks write rows, rank 0 commits one artifact."""
    import os

    wd = tmp_path / "wd"
    corpus = _corpus_with_broken_videos(tmp_path)
    assert invoke("prepare", "--source", "jsonl", "--workdir", wd, "--set", f"jsonl.path={corpus}").exit_code == 0
    cmd = [sys.executable, "-m", "lfvila_cli.main", "cache", "--workdir", str(wd), "--max-failure-rate", "0.9",
           "--set", "frames_per_segment=2", "--set", "height=32", "--set", "width=48", "--local_rank=0"]
    procs = [
        subprocess.Popen(cmd, env=dict(os.environ, RANK=str(r), WORLD_SIZE="2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "cache: done" in outputs[0] and "4/12 segments cached, 8 failed" in outputs[0]
    assert "rank 1/2 finished its rows" in outputs[1]
    from lfvila_cli.pipeline.artifacts import Workdir

    artifacts = Workdir(wd).artifacts("cache")
    assert len(artifacts) == 1 and artifacts[0].summary["world_size"] == 2


def _tiny_corpus(tmp_path, wd):
    from helpers_video import make_video

    video = make_video(tmp_path / "v.mp4")
    corpus = tmp_path / "corpus.jsonl"
    segs = [{"start": i * 0.5, "end": (i + 1) * 0.5, "text": f"part {i}"} for i in range(4)]
    corpus.write_text(json.dumps({"id": "v", "video": str(video), "duration": 3.0, "segments": segs}) + "\n")
    assert invoke("prepare", "--source", "jsonl", "--workdir", wd, "--set", f"jsonl.path={corpus}").exit_code == 0
    return ["--set", "frames_per_segment=2", "--set", "height=32", "--set", "width=48"]


def test_a_cache_whose_store_was_deleted_is_rebuilt(tmp_path):
    wd = tmp_path / "wd"
    small = _tiny_corpus(tmp_path, wd)
    assert invoke("cache", "--workdir", wd, *small).exit_code == 0
    store = next((wd / "store" / "cache").glob("*/frames.zarr"))
    shutil.rmtree(store)
    assert "stale: its frame store" in invoke("status", "--workdir", wd).output
    again = invoke("cache", "--workdir", wd, *small)
    assert again.exit_code == 0 and "is unusable" in again.output and "cache: done" in again.output
    assert (store / "zarr.json").is_file()


def test_an_interrupted_force_hides_the_old_artifact(tmp_path, monkeypatch):
    from lfvila_cli.pipeline.artifacts import Workdir
    import lfvila_cli.data.cache as cache_module

    wd = tmp_path / "wd"
    small = _tiny_corpus(tmp_path, wd)
    args = ["cache", "--workdir", wd, "--store-url", tmp_path / "ext.zarr", *small]
    assert invoke(*args).exit_code == 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "cache_frames", interrupted)
    assert invoke(*args, "--force").exit_code == 130
    assert Workdir(wd).artifacts("cache") == [], "an artifact whose store was wiped must not stay visible"
    monkeypatch.undo()
    assert "cache: done" in invoke(*args).output


def test_user_mistakes_are_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, fragment in [
        (["prepare", "--workdir", afile, *TINY], "afile"),
        (["prepare", "--workdir", tmp_path / "w", "--name", "a/b", *TINY], "--name 'a/b'"),
        (["prepare", "--workdir", tmp_path / "w", "--name", "latest", *TINY], "reserved"),
    ]:
        result = invoke(*args)
        assert result.exit_code != 0 and fragment in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "w" / "store" / "prepare").exists() or not list((tmp_path / "w" / "store" / "prepare").glob("*/manifest.json"))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("stages:\n  - stage: prepare\n    config: {exmple: {}}\n")
    result = invoke("run", pipeline, "--workdir", tmp_path / "w")
    assert result.exit_code == 2 and "p.yaml: stages[0] (prepare): unknown config key 'exmple'" in result.output


def test_status_survives_damaged_artifacts(tmp_path):
    wd = tmp_path / "wd"
    assert invoke("prepare", "--workdir", wd, *TINY).exit_code == 0
    assert invoke("prepare", "--workdir", wd, *TINY, "--set", "example.seed=3").exit_code == 0
    first, second = sorted((wd / "store" / "prepare").glob("*/manifest.json"))
    first.write_text("{not json")
    (second.parent / "stage_config.json").unlink()
    result = invoke("status", "--workdir", wd)
    assert result.exit_code == 0, result.output
    assert "unreadable manifest" in result.output and "unreadable:" in result.output


def test_relative_paths_are_keyed_absolute(tmp_path, monkeypatch):
    wd = tmp_path / "wd"
    (tmp_path / "data").mkdir()
    corpus = tmp_path / "data" / "c.jsonl"
    segs = [{"start": 0, "end": 1, "text": "a"}]
    corpus.write_text(json.dumps({"id": "x", "video": "x.mp4", "segments": segs}) + "\n")
    monkeypatch.chdir(tmp_path / "data")
    assert invoke("prepare", "--source", "jsonl", "--workdir", wd, "--set", "jsonl.path=c.jsonl").exit_code == 0
    monkeypatch.chdir(tmp_path)
    assert "current" in invoke("status", "--workdir", wd).output
    saved = json.loads(next((wd / "store" / "prepare").glob("*/stage_config.json")).read_text())
    assert saved["jsonl"]["path"] == str(corpus)


@pytest.mark.distributed
def test_pipeline_under_a_two_rank_launch_runs_prepare_once(tmp_path):
    import os

    from lfvila_cli.train.engine import _free_port

    port = _free_port()
    pipeline = Path(__file__).parents[1] / "stages" / "quickstart.yaml"
    cmd = [sys.executable, "-m", "lfvila_cli.main", "run", str(pipeline), "--workdir", str(tmp_path),
           "--set", "prepare.example.train_videos=4", "--set", "prepare.example.val_videos=1", "--set", "prepare.example.test_videos=1"]
    for stage in ("pretrain1", "pretrain2", "finetune"):  # both ranks train: 1 sample each per step
        cmd += ["--set", f"{stage}.train.micro_batch=1", "--set", f"{stage}.train.max_steps=2", "--set", f"{stage}.val_every=0"]
    procs = [
        subprocess.Popen(cmd, env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port), OMP_NUM_THREADS="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "prepare: done" in outputs[0] and "cache: done" in outputs[0]
    assert "prepare" not in outputs[1] and "cache: rank 1/2 finished its rows" in outputs[1]
    assert "pretrain1: done" in outputs[0] and "pretrain2: done" in outputs[0]
    assert outputs[0].count("finetune: done") == 2 and outputs[0].count("evaluate: done") == 3
    assert "export: done" in outputs[0] and "index: done" in outputs[0]
    assert outputs[0].count(", selected step 2 on val") == 2  # both fine-tunes validated on the shared val split
    for stage, count in (("prepare", 2), ("pretrain1", 1), ("pretrain2", 1), ("finetune", 2), ("evaluate", 3)):
        assert len(list((tmp_path / "store" / stage).glob("*/manifest.json"))) == count, stage


def test_help_lists_every_config_key():
    from dataclasses import fields

    from lfvila_cli.data.cache import CacheConfig
    from lfvila_cli.data.prepare import PrepareConfig

    cache_help = " ".join(invoke("cache", "--help").output.split())
    assert all(f.name in cache_help for f in fields(CacheConfig)), cache_help
    prepare_help = " ".join(invoke("prepare", "--help").output.split())
    for group in fields(PrepareConfig):
        names = [group.name] if group.name in ("source", "strict") else [g.name for g in fields(group.default_factory())]
        assert all(name in prepare_help for name in names), (group.name, prepare_help)
    from lfvila_cli.report import EvaluateConfig
    from lfvila_cli.train.finetune import FinetuneConfig

    for command, cls in (("finetune", FinetuneConfig), ("evaluate", EvaluateConfig)):
        text = " ".join(invoke(command, "--help").output.split())
        assert all(f.name in text for f in fields(cls)), (command, text)


@pytest.mark.slow
def test_pretrain_stages_through_the_cli(tmp_path):
    wd = tmp_path / "wd"
    sizes = ["--set", "example.train_videos=3", "--set", "example.val_videos=1", "--set", "example.test_videos=0", "--set", "example.max_clips=4"]
    assert invoke("prepare", "--workdir", wd, *sizes).exit_code == 0
    assert invoke("cache", "--workdir", wd, "--set", "height=64", "--set", "width=96").exit_code == 0
    quick = ["--set", "train.max_steps=2", "--set", "val_every=0", "--set", "train.micro_batch=2"]
    first = invoke("pretrain", "--stage", "1", "--workdir", wd, *quick)
    assert first.exit_code == 0, first.output
    assert "pretrain1: done" in first.output and "val R@1" in first.output and "temporal-order accuracy" in first.output
    model_dir = next((wd / "store" / "pretrain1").glob("*/manifest.json")).parent
    for name in ("config.json", "model.safetensors", "tokenizer", "loss.png", "metrics.jsonl", "stage_config.json"):
        assert (model_dir / name).exists(), name
    second = invoke("pretrain", "--stage", "2", "--workdir", wd, *quick)
    assert second.exit_code == 0 and "pretrain2: done" in second.output, second.output
    assert "up to date" in invoke("pretrain", "--stage", "1", "--workdir", wd, *quick, "--resume", "auto").output
    again = invoke("pretrain", "--stage", "1", "--workdir", wd, *quick, "--resume", "never")
    assert again.exit_code == 0 and "pretrain1: done" in again.output, again.output  # afresh, as --force
    bad_resume = invoke("pretrain", "--stage", "1", "--workdir", wd, "--resume", "sometimes")
    assert bad_resume.exit_code == 2 and "--resume must be auto or never" in bad_resume.output
    bad = invoke("pretrain", "--stage", "3", "--workdir", wd)
    assert bad.exit_code == 2 and "--stage must be 1 or 2" in bad.output
    fixed = invoke("pretrain", "--stage", "1", "--workdir", wd, "--set", "stage=2")
    assert fixed.exit_code == 2 and "fixes it to 1" in fixed.output


def test_an_http_video_without_its_package_fails_that_video_not_the_stage(tmp_path):
    """The cache key fingerprints external videos: an http:// URL whose fsspec filesystem needs a
    package that is not installed must not stop the stage there (the video's rows fail)."""
    import importlib.util

    if importlib.util.find_spec("aiohttp") is not None:
        pytest.skip("aiohttp is installed: http:// is reachable")
    from helpers_video import make_video

    wd = tmp_path / "wd"
    video = make_video(tmp_path / "v.mp4")
    segs = [{"start": i * 0.5, "end": (i + 1) * 0.5, "text": f"part {i}"} for i in range(2)]
    records = [{"id": "local", "video": str(video), "duration": 3.0, "segments": segs},
               {"id": "remote", "video": "http://127.0.0.1:9/v.mp4", "duration": 3.0, "segments": segs}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert invoke("prepare", "--source", "jsonl", "--workdir", wd, "--set", f"jsonl.path={corpus}").exit_code == 0
    result = invoke("cache", "--workdir", wd, "--set", "frames_per_segment=2", "--set", "height=32", "--set", "width=48", "--max-failure-rate", "0.9")
    assert result.exit_code == 0 and "2/4 segments cached, 2 failed" in result.output, result.output


STAGE_COMMANDS = {"prepare": "prepare", "cache": "cache", "pretrain": "pretrain1", "finetune": "finetune", "evaluate": "evaluate", "export": "export", "index": "index"}


@pytest.mark.parametrize("command", list(STAGE_COMMANDS))
def test_help_lists_every_config_key_with_its_default(command):
    import dataclasses

    from lfvila_cli.stages import STAGES

    stage = STAGES[STAGE_COMMANDS[command]]
    listed = " ".join(invoke(command, "--help").output.split()).split("Config keys, with their defaults", 1)[1]

    def leaves(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from leaves(value, f"{prefix}{f.name}.")
            elif f"{prefix}{f.name}" not in stage.fixed:
                yield prefix, f.name, value

    for prefix, name, value in leaves(stage.config_class()):
        inner = prefix.split(".", 1)[1] if prefix.count(".") > 1 else ""  # nested below a group: dotted
        assert f" {inner}{name} (" in listed or f" {inner}{name}* (" in listed, (command, prefix, name)
        if prefix:
            assert f"{prefix.split('.')[0]}.*:" in listed, (command, prefix)
        if isinstance(value, int) and not isinstance(value, bool):
            assert f"{inner}{name} ({value})" in listed or f"{inner}{name}* ({value})" in listed, (command, name, value)
    for policy in stage.policy_fields:
        assert f"{policy}* (" in listed


def test_help_shows_defaults_and_choices():
    text = " ".join(invoke("cache", "--help").output.split())
    assert "codec (jpeg | jpegxl | zstd | raw; jpeg)" in text and "quality (94)" in text and "workers* (2)" in text
    pre = " ".join(invoke("pretrain", "--help").output.split())
    assert "train.*: lr (0.0002)" in pre and " stage (" not in pre.split("Config keys", 1)[1]  # --stage sets it


def test_show_config_prints_the_resolved_config_and_runs_nothing(tmp_path):
    import yaml

    wd = tmp_path / "wd"
    result = invoke("cache", "--workdir", wd, "--set", "segment_mode=chunks", "--set", "num_chunks=6", "--show-config")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["segment_mode"] == "chunks" and shown["num_chunks"] == 6 and shown["codec"] == "jpeg"
    assert not wd.exists(), "nothing may run"
    # a pipeline: every stage, with its --set applied
    result = invoke("run", Path(__file__).parents[1] / "stages" / "quickstart.yaml", "--workdir", wd, "--set", "pretrain1.train.epochs=3", "--show-config")
    assert result.exit_code == 0, result.output
    docs = result.output.split("# stages[")
    assert len(docs) == 15 and docs[3].startswith("2] (pretrain1)") and yaml.safe_load(docs[3].split("\n", 1)[1])["train"]["epochs"] == 3
    bad = invoke("cache", "--workdir", wd, "--set", "codex=png", "--show-config")
    assert bad.exit_code == 2 and "unknown config key 'codex'" in bad.output


def _jsonl_with_a_bad_record(tmp_path):
    good = {"id": "a", "video": "a.mp4", "segments": [{"start": 0, "end": 1, "text": "x"}]}
    bad = {"id": "b", "video": "b.mp4", "segments": [{"start": 2, "end": 1, "text": "y"}]}
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    return path


def test_strict_fails_on_a_corpus_with_rejections_even_when_a_lenient_run_made_it(tmp_path):
    wd, corpus = tmp_path / "wd", _jsonl_with_a_bad_record(tmp_path)
    lenient = invoke("prepare", "--source", "jsonl", "--set", f"jsonl.path={corpus}", "--workdir", wd)
    assert lenient.exit_code == 0 and "1 rejected" in lenient.output
    strict = invoke("prepare", "--source", "jsonl", "--set", f"jsonl.path={corpus}", "--workdir", wd, "--strict")
    assert strict.exit_code == 1, strict.output
    assert strict.output.strip() == f"error: --strict: the corpus {next((wd / 'store' / 'prepare').glob('*/manifest.json')).parent.name[:16]} (up to date) rejected 1 record(s), first: {corpus}:2: segment ends before it starts"
    dry = invoke("prepare", "--source", "jsonl", "--set", f"jsonl.path={corpus}", "--workdir", wd, "--strict", "--dry-run")
    assert dry.exit_code == 1 and "--strict" in dry.output


def test_a_path_that_is_not_an_artifact_is_one_line(tmp_path):
    wd = tmp_path / "wd"
    for path, why in ((tmp_path, "no manifest.json in it"), (tmp_path / "nowhere" / "x", "no such directory")):
        result = invoke("cache", "--corpus", path, "--workdir", wd)
        assert result.exit_code == 1 and result.output == f"error: {path}: not a 'prepare' artifact ({why}); give a ref name, a key (prefix) or an artifact directory (store/prepare/<key>)\n"


def test_lfvila_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    plain = invoke("cache", "--set", "codex=png", "--workdir", tmp_path)
    debug = invoke("cache", "--set", "codex=png", "--workdir", tmp_path, env={"LFVILA_DEBUG": "1"})
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" in debug.output and "ConfigError: unknown config key 'codex'" in debug.output


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`lfvila ... | head -1`: the reader goes away; no 'Broken pipe' message, SIGPIPE's status."""
    script = (
        "import sys; from lfvila_cli.main import main; "
        "sys.argv = ['lfvila', 'status', '--workdir', sys.argv[1]]; main()"
    )
    wd = tmp_path / "wd"
    for stage in ("prepare", "cache"):
        for i in range(400):  # enough lines to fill the pipe
            (wd / "store" / stage / f"{i:016x}.partial").mkdir(parents=True)
    shell = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {shlex.quote(str(wd))} | head -1; echo \"status ${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
    assert "status 141" in done.stdout, done
    assert done.stderr == "", done.stderr


def test_a_renamed_option_still_works_with_a_warning(tmp_path):
    result = invoke("index", "--from", "nothing-here", "--workdir", tmp_path, "--dry-run")
    assert "warning: `lfvila index --from` is now `--model`" in result.output and "stops working in 0.3" in result.output
    assert "--from" not in invoke("index", "--help").output  # hidden: the new name is the one taught
