"""Every example in a command's --help works: run on a small work directory that has what the
examples name (refs my-stage2, my-frames, my-export; a hostfile; a release checkpoint file).

Stage commands and `run` run with --dry-run (their inputs are resolved and checked, nothing is built), the
prepare examples that read datasets not in the repository with --show-config (their keys and
values are checked), the others (search, status, env, run --show-config) as written.
"""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lfvila_cli.main import app
from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.stages import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
SIZE = {"train_videos": 4, "val_videos": 1, "test_videos": 1, "max_clips": 4, "height": 64, "width": 96}
FRAMES = {"frames_per_segment": 8, "height": 64, "width": 96}
QUICK = {"train": {"micro_batch": 2, "max_steps": 1}, "val_every": 0}
STAGE_COMMANDS = {"prepare", "cache", "pretrain", "features", "finetune", "evaluate", "export", "index"}


def help_examples() -> list[tuple[str, str]]:
    """``(command, example line)`` from every command's docstring (the text --help shows)."""
    found = []
    for info in app.registered_commands:
        doc = inspect.getdoc(info.callback) or ""
        name = info.name or info.callback.__name__
        for line in doc.splitlines():
            line = re.split(r"\s{2,}\(", line.strip())[0]  # "lfvila index   (a comment)" -> the command
            if re.match(r"(lfvila |torchrun |srun |sbatch )", line):
                found.append((name, line))
    return found


def lfvila_args(example: str) -> list[str]:
    """The lfvila arguments of an example line (under torchrun, srun or sbatch too)."""
    words = shlex.split(example.split(">")[0])
    if words[0] == "sbatch":
        return lfvila_args(words[words.index("--wrap") + 1])
    if "lfvila_cli.main" in words:
        return words[words.index("lfvila_cli.main") + 1:]
    return words[words.index("lfvila") + 1:]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    stages = [
        {"stage": "prepare", "config": {"source": "example", "example": SIZE}},
        {"stage": "cache", "config": FRAMES},
        {"stage": "pretrain1", "config": QUICK},
        {"stage": "pretrain2", "config": QUICK},
        {"stage": "features", "config": {"loader": {"flip_prob": 0.0}}},  # what `pretrain --set features=true` reads
        {"stage": "cache", "config": {**FRAMES, "segment_mode": "chunks", "num_chunks": 4}},
        {"stage": "finetune", "config": {"task": "activitynet", **QUICK}},
        {"stage": "export", "config": {"model": "pretrain1"}},
        {"stage": "index", "config": {}},
        {"stage": "prepare", "config": {"source": "example", "example": {**SIZE, "task": "how2qa"}}},
        {"stage": "cache", "config": {**FRAMES, "segment_mode": "chunks", "num_chunks": 4}},
    ]
    (root / "p.yaml").write_text(yaml.safe_dump({"stages": stages}))
    wd = Workdir(root / "wd")
    results = run_pipeline(wd, root / "p.yaml", progress=False, echo=lambda line: None)
    assert all(r.status in ("done", "up to date") for r in results)
    by_stage = {r.stage: r.artifact for r in results}
    wd.set_ref("pretrain2", "my-stage2", by_stage["pretrain2"].key)
    wd.set_ref("cache", "clips", results[1].artifact.key)
    wd.set_ref("cache", "questions", results[-1].artifact.key)
    wd.set_ref("cache", "my-frames", results[5].artifact.key)
    wd.set_ref("export", "my-export", by_stage["export"].key)
    (root / "hosts.txt").write_text("localhost slots=1\n")
    (root / "how2qa_release.pt").write_bytes(b"stands in for the authors' file: a dry run reads only its bytes")
    return root, wd


def test_every_command_has_examples():
    commands = {name for name, _ in help_examples()}
    assert commands >= STAGE_COMMANDS | {"search", "run", "env"}, commands


@pytest.mark.slow
@pytest.mark.parametrize("command, example", help_examples(), ids=[f"{c}:{i}" for i, (c, _) in enumerate(help_examples())])
def test_help_example_works(workdir, monkeypatch, command, example):
    root, wd = workdir
    monkeypatch.chdir(root)
    args = [str(ROOT / a) if a.startswith("stages/") else a for a in lfvila_args(example)]
    assert args[0] == command, (command, example)
    if command == "prepare" and "--source example" not in example and "--source jsonl" not in example:
        args.append("--show-config")  # reads a dataset not in the repository: its options are checked
    elif (command in STAGE_COMMANDS or command == "run") and "--show-config" not in args and "--dry-run" not in args:
        args.append("--dry-run")
    if command == "prepare" and "jsonl.path=my_corpus.jsonl" in example:
        args = [a.replace("my_corpus.jsonl", str(ROOT / "examples" / "custom_dataset" / "my_corpus.jsonl")) for a in args]
    # `latest` as it is when a user runs the example: the store of clips before pre-training, a
    # store of chunks for the downstream commands (of questions for a QA task)
    latest = "clips" if command in ("pretrain", "cache", "features") else "questions" if "how2qa" in example else "my-frames"
    wd.set_ref("cache", "latest", wd.resolve("cache", latest).key)
    result = CliRunner().invoke(app, [*args, "--workdir", str(wd.root)] if command not in ("env",) else args)
    assert result.exit_code == 0, f"{example}\n{result.output}"
    if "--dry-run" in args:
        assert re.search(r"would (run|launch)|up to date", result.output), result.output
