"""Fail before work: every stage of a pipeline, and a single command's stage, is checked against
its inputs (as they will be) before anything runs (lfvila_cli.pipeline.plan, stages/compat.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lfvila_cli.errors import ArtifactError, ConfigError
from lfvila_cli.main import app
from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.stages import load_pipeline, run_pipeline
from lfvila_cli.pipeline.chain import plan_pipeline

ROOT = Path(__file__).resolve().parent.parent
SIZE = {"train_videos": 4, "val_videos": 1, "test_videos": 1, "max_clips": 4, "height": 64, "width": 96}
FRAMES = {"frames_per_segment": 8, "height": 64, "width": 96}
CHUNKS = {**FRAMES, "segment_mode": "chunks", "num_chunks": 4}


def pipeline(tmp_path: Path, stages: list[tuple[str, dict]]) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"stage": s, "config": c} for s, c in stages]}))
    return path


def fails_before_work(tmp_path, stages, match, error=ConfigError):
    wd = Workdir(tmp_path / "wd")
    with pytest.raises(error, match=match):
        run_pipeline(wd, pipeline(tmp_path, stages), progress=False, echo=lambda line: None)
    assert not (tmp_path / "wd" / "store").exists() or not any((tmp_path / "wd" / "store").iterdir()), "a stage ran"


@pytest.mark.parametrize("path", sorted((ROOT / "stages").rglob("*.yaml")), ids=lambda p: p.name)
def test_the_projects_pipelines_plan_cleanly(tmp_path, path):
    """No false alarm: the quickstart and every paper recipe (after the pre-training recipe they
    start from) pass the checks in an empty work directory."""
    import dataclasses

    pretrain = ROOT / "stages" / "paper" / "pretrain.yaml"
    entries = (load_pipeline(pretrain) if path.parent.name == "paper" and path != pretrain else []) + load_pipeline(path)
    for entry in entries:  # the recipes leave the datasets' paths to the user: prepare's own check says so (below)
        if entry.stage.name == "prepare" and entry.config.get("source") != "example":
            entry.stage = dataclasses.replace(entry.stage, check=None)
    assert len(plan_pipeline(Workdir(tmp_path), path, entries)) == len(entries)


def test_a_missing_input_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(ArtifactError, match=r"run `lfvila pretrain --stage 1` first"):
        Workdir(tmp_path).resolve("pretrain1", "latest")


def test_a_typo_in_the_last_stage_fails_before_the_first_runs(tmp_path):
    stages = [("prepare", {"source": "example", "example": SIZE}), ("cache", FRAMES), ("evaluate", {"splitt": "val"})]
    fails_before_work(tmp_path, stages, r"stages\[2\] \(evaluate\): unknown config key 'splitt'")


def test_an_input_no_entry_makes_and_no_artifact_has_fails_first(tmp_path):
    stages = [("prepare", {"source": "example", "example": SIZE}), ("finetune", {"task": "how2qa"})]
    fails_before_work(tmp_path, stages, r"stages\[1\] \(finetune\): no 'cache' artifact", error=ArtifactError)


@pytest.mark.parametrize(
    "stages, match",
    [
        # fine-tuning on the store of clips made for pre-training
        ([("cache", FRAMES), ("finetune", {"task": "retrieval", "init": "scratch"})], r"stages\[2\] \(finetune\): input cache \(stages\[1\]\) is a frame store of segment_mode=clips"),
        # pre-training on a chunks store
        ([("cache", CHUNKS), ("pretrain1", {})], r"pre-training draws windows of consecutive clips: cache with --set segment_mode=clips"),
        # a QA task on a corpus of paragraphs
        ([("cache", CHUNKS), ("finetune", {"task": "how2qa", "init": "scratch"})], r"config key 'task': how2qa reads multiple-choice items, but input cache \(stages\[1\]\) holds the paragraphs of prepare \(stages\[0\]\)"),
        # the model's clips are 8 frames
        ([("cache", {**FRAMES, "frames_per_segment": 4}), ("pretrain1", {})], r"holds 4 frames per segment, but the model's clips are 8 frames"),
        ([("cache", {**CHUNKS, "frames_per_segment": 4}), ("finetune", {"task": "retrieval", "init": "scratch"})], r"holds 4 frames per chunk but the model's clips are 8 frames"),
        # more sentence slots than the model has
        ([("cache", CHUNKS), ("finetune", {"task": "retrieval", "init": "scratch", "loader": {"clips_per_sample": 9}})], r"config key 'loader.clips_per_sample': 9 sentence slots"),
    ],
)
def test_inputs_that_cannot_fit_fail_before_work(tmp_path, stages, match):
    fails_before_work(tmp_path, [("prepare", {"source": "example", "example": SIZE}), *stages], match)


def test_more_frames_than_the_cross_modal_encoder_takes_fail_first(tmp_path):
    stages = [
        ("prepare", {"source": "example", "example": {**SIZE, "task": "violin"}}),
        ("cache", {**CHUNKS, "num_chunks": 5}),
        ("finetune", {"task": "violin", "init": "scratch"}),
    ]
    fails_before_work(tmp_path, stages, r"5 chunks × 8 = 40 frames, more than the model's fusion.max_frames=32")


def test_an_index_whose_export_takes_another_frame_size_fails_first(tmp_path):
    stages = [
        ("prepare", {"source": "example", "example": SIZE}), ("cache", FRAMES), ("pretrain1", {}),
        ("export", {"height": 32, "width": 48}), ("cache", CHUNKS), ("index", {}),
    ]
    fails_before_work(tmp_path, stages, r"input export \(stages\[3\]\) takes 32 frames at 32×48, but the frame store cache \(stages\[4\]\) gives 32 at 64×96")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A work directory with a tiny corpus and its two frame stores (seconds)."""
    root = tmp_path_factory.mktemp("plan")
    wd = Workdir(root / "wd")
    path = root / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": [
        {"stage": "prepare", "config": {"source": "example", "example": SIZE}},
        {"stage": "cache", "id": "clips", "config": FRAMES},
        {"stage": "cache", "id": "chunks", "config": CHUNKS},
    ]}))
    results = run_pipeline(wd, path, progress=False, echo=lambda line: None)
    return wd, results[1].artifact, results[2].artifact


def test_single_commands_and_their_dry_runs_report_the_same_problem(made):
    wd, clips, chunks = made
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["finetune", "--task", "how2qa", "--scratch", "--cache", clips.key[:8], "-w", str(wd.root), *extra])
        assert result.exit_code == 2, result.output
        assert f"input cache/{clips.key[:16]} is a frame store of segment_mode=clips" in result.output
        assert len(result.output.strip().splitlines()) == 1
    # the right store passes the checks (and, as a dry run, would run)
    ok = CliRunner().invoke(app, ["finetune", "--task", "retrieval", "--scratch", "--cache", chunks.key[:8], "-w", str(wd.root), "--dry-run"])
    assert ok.exit_code == 0 and "finetune: would run" in ok.output, ok.output


def test_a_pipeline_over_existing_artifacts_is_checked_against_them(made, tmp_path):
    wd, clips, _ = made
    path = pipeline(tmp_path, [("finetune", {"task": "violin", "init": "scratch"})])
    # the latest cache is the chunks store of the example's paragraphs: not VIOLIN items
    with pytest.raises(ConfigError, match=r"violin reads classification items, but input cache/\w+ holds the paragraphs of prepare/\w+"):
        run_pipeline(wd, path, dry_run=True, progress=False, echo=lambda line: None)


def test_the_keys_help_marks_as_outside_the_key_are_outside_it():
    """``--help`` marks a stage's policy fields with ``*``: changing one never changes the key."""
    from lfvila_cli.config import resolve
    from lfvila_cli.stages import STAGES

    changed = {"max_failure_rate": "0.5", "workers": "3", "retry_failed": "true", "decode_timeout_s": "5", "strict": "true", "batch": "3", "device": "cpu"}
    for stage in STAGES.values():
        base = stage.keyed_config(resolve(stage.config_class, layers=[stage.fixed]))
        for name in stage.policy_fields:
            other = resolve(stage.config_class, layers=[stage.fixed], overrides=[f"{name}={changed[name]}"])
            assert getattr(other, name) != getattr(resolve(stage.config_class, layers=[stage.fixed]), name)
            assert stage.keyed_config(other) == base, (stage.name, name)
