"""``lfvila finetune`` from the authors' released checkpoints (init=release): tiny checkpoints
written in the authors' format (``export_official_state_dict``, fp16, ``torch.save`` of a flat
dict as their DeepSpeed ``save_fp16_model`` did), fine-tuned through the importer by a pipeline
and by the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lfvila_cli.pipeline.artifacts import KEY_CHARS, Workdir
from lfvila_cli.data.tokenizer import load_tokenizer, train_wordpiece_tokenizer
from lfvila_cli.errors import LfvilaError
from lfvila_cli.main import app
from lfvila_cli.model.lfvila import build_model
from lfvila_cli.model.presets import get_preset
from lfvila_cli.model.weights import convert_official_state_dict, export_official_state_dict, read_state_dict
from lfvila_cli.pipeline.stage import resolve_config
from lfvila_cli.stages import get_stage, run_pipeline
from lfvila_cli.train.finetune import build_task_model

SIZE = {"train_videos": 8, "val_videos": 2, "test_videos": 2, "max_clips": 5, "height": 64, "width": 96}
CHUNKS = {"frames_per_segment": 8, "height": 64, "width": 96, "segment_mode": "chunks", "num_chunks": 4}
QUICK = {"train": {"micro_batch": 4, "max_steps": 2}, "val_every": 1, "loader": {"flip_prob": 0.0}}
WORDS = (
    "a the person man woman dog cat ball car walks runs plays throws catches drives sits stands opens "
    "what who where when why how is are does do video clip first then after before while and of in on "
    "abcdefghijklmnopqrstuvwxyz 0123456789 . , ? !"
)


def _pipeline(path: Path, stages: list[tuple[str, dict]]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"stages": [{"stage": s, "config": c} for s, c in stages]}))
    return path


def _export(variant: str, vocab: int, path: Path, seed: int) -> Path:
    """A tiny model of ``variant`` in the authors' format: their names, fp16, a flat dict."""
    config = get_preset("lfvila-tiny", variant, text_model="random")
    config.text.bert_config = {**config.text.bert_config, "vocab_size": vocab}
    torch.manual_seed(seed)
    torch.save(export_official_state_dict(build_model(config)), path)
    return path


class Release:
    """The shared fixture: a workdir with both tasks' frames, a tokenizer, two checkpoints."""

    def __init__(self, root: Path):
        self.root = root
        self.wd = Workdir(root / "wd")
        self.tokenizer = root / "tokenizer"
        train_wordpiece_tokenizer([WORDS] * 3, 120, self.tokenizer)
        vocab = len(load_tokenizer(self.tokenizer, local_files_only=True))
        self.retrieval = _export("retrieval", vocab, root / "retrieval_release.pt", seed=1)
        self.how2qa = _export("qa-multichoice", vocab, root / "how2qa_release.pt", seed=2)
        self.vocab = vocab

    def ft(self, task: str, checkpoint: Path, **extra) -> dict:
        return {"task": task, "init": "release", "release_checkpoint": str(checkpoint), "model": "lfvila-tiny",
                "tokenizer": str(self.tokenizer), **QUICK, **extra}

    def stages(self, task: str, checkpoint: Path, evaluate: bool = True) -> list[tuple[str, dict]]:
        example = SIZE if task != "how2qa" else {**SIZE, "task": "how2qa"}
        extra = {"max_subtitles": 1} if task == "how2qa" else {}
        chain = [("prepare", {"source": "example", "example": example}), ("cache", CHUNKS), ("finetune", self.ft(task, checkpoint, **extra))]
        return chain + ([("evaluate", {})] if evaluate else [])

    def run(self, name: str, stages, dry_run: bool = False):
        lines: list[str] = []
        results = run_pipeline(self.wd, _pipeline(self.root / f"{name}.yaml", stages), dry_run=dry_run, progress=False, echo=lines.append)
        return results, lines


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    rel = Release(tmp_path_factory.mktemp("release"))
    # Frames of both tasks (prepare + cache only: a dry run of the chain stops at finetune).
    for task, checkpoint in (("how2qa", rel.how2qa), ("activitynet", rel.retrieval)):
        results, lines = rel.run(f"frames-{task}", rel.stages(task, checkpoint)[:2])
        assert [r.status for r in results] == ["done", "done"], lines
    return rel


def _cache_key(rel: Release, task: str, checkpoint: Path) -> str:
    results, _ = rel.run(f"key-{task}", rel.stages(task, checkpoint, evaluate=False), dry_run=True)
    assert [r.status for r in results[:2]] == ["up to date", "up to date"]
    return results[1].key[:KEY_CHARS]  # the directory name (a full 64-hex key is not accepted by Workdir.resolve)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["activitynet", "how2qa"])
def test_finetune_starts_from_a_release_checkpoint_and_evaluates(release, task):
    checkpoint = release.retrieval if task == "activitynet" else release.how2qa
    results, lines = release.run(f"ft-{task}", release.stages(task, checkpoint))
    assert [r.status for r in results] == ["up to date", "up to date", "done", "done"], lines
    finetuned, evaluated = results[2].artifact, results[3].artifact
    assert set(finetuned.manifest["inputs"]) == {"cache"}  # no pre-training artifact
    init = finetuned.summary["init"]
    assert init["from"] == str(checkpoint)
    assert init["summary"].startswith(f"{checkpoint}: loaded ") and "0 missing, 0 unexpected" in init["summary"]
    config = json.loads((finetuned.path / "config.json").read_text())
    assert config["text"]["bert_config"]["vocab_size"] == release.vocab  # the checkpoint's rows
    assert config["video"]["global_pooling"] == "release"  # the release's video feature, recorded
    metrics = json.loads((evaluated.path / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["split"] == "test"
    # Nothing changed: the whole chain is up to date (the checkpoint's digest is stable).
    again, _ = release.run(f"ft-{task}", release.stages(task, checkpoint), dry_run=True)
    assert [r.status for r in again] == ["up to date"] * 4 and again[2].key == results[2].key


@pytest.mark.parametrize("task, variant", [("activitynet", "retrieval"), ("how2qa", "qa-multichoice")])
def test_the_model_starts_from_the_checkpoint_weights(release, task, variant):
    checkpoint = release.retrieval if variant == "retrieval" else release.how2qa
    tokenizer = load_tokenizer(release.tokenizer, local_files_only=True)
    cfg = resolve_config(get_stage("finetune"), layers=[release.ft(task, checkpoint)])  # as the pipeline resolves it
    model, config, report = build_task_model(cfg, None, tokenizer, None)
    state, _ = read_state_dict(checkpoint)
    # The authors' fp16 tensors, cast to the model's fp32: equal, name by name.
    key = "video_encoder.layers.2.blocks.1.attn.qkv.weight"
    assert state[key].dtype == torch.float16 and torch.equal(model.state_dict()[key], state[key].float())
    words = state["text_encoder.bert.embeddings.word_embeddings.weight"]
    assert model.text_encoder.word_embeddings.num_embeddings == words.shape[0] == release.vocab
    converted, _ = convert_official_state_dict(state, model)
    own = model.state_dict()
    assert set(converted) == set(own)  # every model tensor comes from the file
    for target, (_, tensor) in converted.items():
        assert torch.equal(own[target], tensor.to(own[target].dtype)), target
    assert report["from"] == str(checkpoint) and "0 missing" in report["summary"]


def test_a_byte_of_the_checkpoint_keys_the_finetune(release, tmp_path):
    checkpoint = tmp_path / "copy.pt"
    shutil.copyfile(release.retrieval, checkpoint)
    first, _ = release.run("bytes", release.stages("activitynet", checkpoint, evaluate=False), dry_run=True)
    assert [r.status for r in first] == ["up to date", "up to date", "would run"]
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    second, _ = release.run("bytes", release.stages("activitynet", checkpoint, evaluate=False), dry_run=True)
    assert second[2].status == "would run" and second[2].key != first[2].key
    assert second[1].key == first[1].key  # only the finetune key moves
    data[len(data) // 2] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    third, _ = release.run("bytes", release.stages("activitynet", checkpoint, evaluate=False), dry_run=True)
    assert third[2].key == first[2].key


@pytest.mark.parametrize("task, wrong", [("how2qa", "retrieval"), ("activitynet", "how2qa")])
def test_a_checkpoint_of_another_layout_fails_in_one_line_naming_the_file(release, task, wrong):
    checkpoint = getattr(release, wrong)
    with pytest.raises(LfvilaError) as caught:
        release.run(f"wrong-{task}", release.stages(task, checkpoint, evaluate=False))
    message = str(caught.value)
    assert "\n" not in message and str(checkpoint) in message, message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_checkpoint_that_is_not_a_state_dict_fails_in_one_line(release, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(release.retrieval.read_bytes()[:1000])
    with pytest.raises(LfvilaError) as caught:
        release.run("broken", release.stages("activitynet", bad, evaluate=False))
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message and "not a readable PyTorch checkpoint" in message


# --- the command line ---------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_cli_finetune_release_checkpoint(release):
    cache = _cache_key(release, "activitynet", release.retrieval)
    # The pipeline's own finetune of the same settings: the CLI must agree on its key.
    # (one step, so not the finetune another test runs through the pipeline)
    stages = release.stages("activitynet", release.retrieval, evaluate=False)
    stages[2] = ("finetune", {**stages[2][1], "train": {"micro_batch": 4, "max_steps": 1}})
    pipeline, _ = release.run("cli-ref", stages, dry_run=True)
    common = [
        "--task", "activitynet", "--release-checkpoint", release.retrieval, "--cache", cache, "--workdir", release.wd.root,
        "--set", "model=lfvila-tiny", "--set", f"tokenizer={release.tokenizer}", "--set", "train.micro_batch=4",
        "--set", "train.max_steps=1", "--set", "val_every=1", "--set", "loader.flip_prob=0.0",
    ]
    dry = invoke("finetune", *common, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.strip() == f"finetune: would run ({pipeline[2].key[:KEY_CHARS]})", dry.output
    run = invoke("finetune", *common)
    assert run.exit_code == 0, run.output
    assert run.output.strip().splitlines()[-1].startswith(f"finetune: done ({pipeline[2].key[:KEY_CHARS]})"), run.output
    artifact = release.wd.get("finetune", pipeline[2].key)
    assert set(artifact.manifest["inputs"]) == {"cache"} and artifact.summary["init"]["from"] == str(release.retrieval)
    again = invoke("finetune", *common, "--dry-run")
    assert again.exit_code == 0 and "finetune: up to date" in again.output, again.output


def test_cli_scratch_and_release_checkpoint_together_is_exit_2(release, tmp_path):
    result = invoke("finetune", "--task", "activitynet", "--scratch", "--release-checkpoint", release.retrieval, "--workdir", tmp_path)
    assert result.exit_code == 2
    assert result.output.strip() == "error: --scratch and --release-checkpoint are two different starts: give one"


def test_cli_release_without_a_tokenizer_says_which_one(release, tmp_path):
    cache = _cache_key(release, "activitynet", release.retrieval)
    result = invoke(
        "finetune", "--task", "activitynet", "--release-checkpoint", release.retrieval, "--cache", cache,
        "--workdir", release.wd.root, "--set", "model=lfvila-tiny", "--set", "train.micro_batch=4", "--set", "train.max_steps=1",
    )
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert "init=release needs the tokenizer" in result.output
