"""The custom-data walk-through (examples/custom_dataset/README.md), run as written.

Every ``bash`` block of the walk-through is run in order, in an empty directory: ``python
examples/...`` scripts through their ``main``, ``lfvila`` commands through the CLI. The output
block after each command block is what the README promises: every ``<stage>: done`` line and
every report or search line it shows must be what the commands print (keys and timings aside).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lfvila_cli.main import app

ROOT = Path(__file__).resolve().parent.parent
WALKTHROUGH = ROOT / "examples" / "custom_dataset" / "README.md"
DONE = re.compile(r"^(\w+): (done|up to date) \((\w+)\) in [\d.]+s — (.*)$")


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced block, in order."""
    return [(lang, body) for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def steps(text: str) -> list[tuple[list[str], list[str]]]:
    """``(commands, promised output lines)``: each bash block with the plain block after it."""
    found, parts = [], blocks(text)
    for i, (lang, body) in enumerate(parts):
        if lang != "bash":
            continue
        promised = parts[i + 1][1].splitlines() if i + 1 < len(parts) and parts[i + 1][0] == "" else []
        found.append(([line for line in body.splitlines() if line.strip()], promised))
    return found


def run_script(argv: list[str], capsys) -> str:
    path = ROOT / argv[0]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(argv[1:]) == 0, argv
    return capsys.readouterr().out


def comparable(line: str) -> str:
    """A printed line without what changes between machines and runs: keys, seconds, rates."""
    match = DONE.match(line)
    if match:
        line = f"{match[1]}: {match[2]} — {match[4]}"
    line = re.sub(r"[\d.]+ videos/s", "N videos/s", line)
    return re.sub(r"lfvila-work/store/(\w+)/\w+/", r"lfvila-work/store/\1/KEY/", line)


def test_walkthrough_blocks_parse():
    found = steps(WALKTHROUGH.read_text())
    commands = [c for cs, _ in found for c in cs]
    # the journey the walk-through promises: every stage, and each generic task
    for needle in ("prepare", "cache", "pretrain --stage 1", "pretrain --stage 2", "finetune --task retrieval", "evaluate",
                   "export --onnx", "index", "search", "finetune --task multiple-choice", "finetune --task classification"):
        assert any(f"lfvila {needle}" in c for c in commands), needle
    assert all(c.startswith(("lfvila ", "python examples/custom_dataset/")) for c in commands), commands


@pytest.mark.slow
def test_custom_dataset_walkthrough(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LFVILA_DEBUG", raising=False)
    runner = CliRunner()
    for commands, promised in steps(WALKTHROUGH.read_text()):
        printed: list[str] = []
        for command in commands:
            argv = shlex.split(command)
            if argv[0] == "python":
                printed += run_script(argv[1:], capsys).splitlines()
                continue
            result = runner.invoke(app, argv[1:])
            assert result.exit_code == 0, f"{command}\n{result.output}"
            printed += result.stdout.splitlines()
        got = [comparable(line) for line in printed]
        for line in promised:
            if line.strip() in ("", "..."):
                continue
            if DONE.match(line) or line.startswith(("|", "1. ", "     clip", "my_", "(full report")) or line.endswith("statements"):
                assert comparable(line) in got, f"the walk-through shows {line!r}; the commands printed:\n" + "\n".join(printed)
    # Reports of the generic tasks name no paper figures.
    for report in (tmp_path / "lfvila-work" / "store" / "evaluate").glob("*/report.md"):
        text = report.read_text()
        assert "paper" not in text and "LF-VILA" not in text, report
    # The generic QA tasks sized their heads from the data: 4 candidates, labels 0 and 1.
    summaries = {
        m["summary"]["task"]: m["summary"]
        for m in (json.loads(p.read_text()) for p in (tmp_path / "lfvila-work" / "store" / "finetune").glob("*/manifest.json"))
    }
    assert summaries["multiple-choice"]["num_candidates"] == 4
    assert summaries["classification"]["num_labels"] == 2


def _converter():
    path = ROOT / "examples" / "custom_dataset" / "folder_to_jsonl.py"
    spec = importlib.util.spec_from_file_location("folder_to_jsonl", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folder_converter_reads_srt_and_vtt_and_merges_short_cues(tmp_path):
    conv = _converter()
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "a.srt").write_text(
        "1\n00:00:00,000 --> 00:00:02,500\nHello <i>there</i>.\n\n2\n00:00:02,500 --> 00:00:03,000\nBrief.\n\n"
        "3\n00:00:03,000 --> 00:00:06,000\nLonger line\nover two lines.\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.webm").write_bytes(b"")
    (tmp_path / "sub" / "b.vtt").write_text("WEBVTT\n\n00:01.000 --> 00:04.250\nfirst\n\n01:00:00.000 --> 01:00:01.500\nlast\n")
    (tmp_path / "c.mp4").write_bytes(b"")  # no subtitles
    records, left_out = conv.folder_records(tmp_path, val=0.0, test=0.0, min_seconds=1.0)
    by_id = {r["id"]: r for r in records}
    assert by_id["a"]["segments"] == [
        {"start": 0.0, "end": 2.5, "text": "Hello there."},
        {"start": 2.5, "end": 6.0, "text": "Brief. Longer line over two lines."},  # the 0.5 s cue joins the next
    ]
    assert by_id["sub/b"]["video"] == "sub/b.webm" and by_id["sub/b"]["segments"][1] == {"start": 3600.0, "end": 3601.5, "text": "last"}
    assert left_out == [f"{tmp_path / 'c.mp4'}: no .srt or .vtt beside it"]
    assert {r["split"] for r in records} == {"train"}


def test_folder_converter_splits_are_stable_when_videos_are_added():
    conv = _converter()
    ids = [f"v{i}" for i in range(50)]
    first = conv.assign_splits(ids, 0.2, 0.1)
    assert sum(s == "val" for s in first.values()) == 10 and sum(s == "test" for s in first.values()) == 5
    assert sorted(conv.assign_splits(ids[:3], 0.1, 0.1).values()) == ["test", "train", "val"]  # at least one each
    grown = conv.assign_splits(ids + [f"w{i}" for i in range(5)], 0.2, 0.1)
    moved = sum(first[i] != grown[i] for i in ids)
    assert moved <= 3, moved  # adding 10% more videos moves only the few at the split boundaries
