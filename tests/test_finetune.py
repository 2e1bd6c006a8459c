"""Fine-tuning and evaluation of the downstream tasks (lfvila_cli.train.finetune,
lfvila_cli.data.task_data, lfvila_cli.report, the task parts of lfvila_cli.evaluation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.data.task_data import IGNORE_SPAN, merge_sentences, span_labels
from lfvila_cli.errors import ConfigError, DataError
from lfvila_cli.evaluation import (
    dual_softmax_ranks,
    dual_softmax_ranks_reference,
    ranks_chunked,
    retrieval_ranks,
    span_metrics,
    task_metrics,
)
from lfvila_cli.stages import run_pipeline
from lfvila_cli.stages.finetune import input_names
from lfvila_cli.report import report_table
from lfvila_cli.tasks import BENCHMARKS, TASKS, candidate_count, class_count
from lfvila_cli.train.finetune import FinetuneConfig

# --- pieces ---------------------------------------------------------------------------------------


def test_merge_joins_the_shortest_adjacent_pair_first():
    sentences = ["a b c", "d", "e", "f g h i", "j"]
    # pairs by combined words: (a b c|d)=4, (d|e)=2, (e|f g h i)=5, (f g h i|j)=5 -> join d+e first
    assert merge_sentences(sentences, 4) == ["a b c", "d e", "f g h i", "j"]
    # then (a b c|d e)=5, (d e|f g h i)=6, (f g h i|j)=5: a tie, the earliest pair wins
    assert merge_sentences(sentences, 3) == ["a b c d e", "f g h i", "j"]
    assert merge_sentences(sentences, 1) == ["a b c d e f g h i j"]
    assert merge_sentences(["x", "y"], 4) == ["x", "y"]  # never split, never padded here
    with pytest.raises(ValueError):
        merge_sentences(["x"], 0)


def test_span_labels_follow_the_frame_times():
    times = np.array([0.5, 1.5, 2.5, 3.5], np.float32)
    assert span_labels(times, [1.0, 3.0]).tolist() == [0, 1, 1, 0]
    assert span_labels(times, [1.5, 1.5]).tolist() == [0, 1, 0, 0]  # zero-length spans occur (How2QA)
    assert span_labels(times, None).tolist() == [IGNORE_SPAN] * 4


@pytest.mark.parametrize("n,chunk", [(1, 4), (13, 4), (40, 7), (40, 64)])
def test_dual_softmax_chunked_matches_the_full_matrix(n, chunk):
    gen = torch.Generator().manual_seed(n)
    query = torch.nn.functional.normalize(torch.randn(n, 16, generator=gen), dim=-1)
    keys = torch.nn.functional.normalize(query + 0.8 * torch.randn(n, 16, generator=gen), dim=-1)
    for temperature in (0.01, 0.1, 1.0):
        assert torch.equal(dual_softmax_ranks(query, keys, temperature, chunk), dual_softmax_ranks_reference(query, keys, temperature))


def test_dual_softmax_fixes_a_hub_video_and_is_reported_apart():
    # One video (column 0) is everyone's nearest; the prior over queries spreads it out.
    text = torch.eye(4) + 1.2 * torch.nn.functional.one_hot(torch.zeros(4, dtype=torch.long), 4)
    video = torch.eye(4)
    plain = ranks_chunked(text, video)
    rescored = dual_softmax_ranks(text, video, temperature=0.05)
    assert plain.tolist() == [1, 2, 2, 2] and rescored.tolist() == [1, 1, 1, 1]
    metrics = task_metrics("retrieval", {"video": video, "text": text}, dual_softmax=0.05)
    assert metrics["text_to_video"]["R@1"] == 0.25 and metrics["dual_softmax"]["text_to_video"]["R@1"] == 1.0
    assert metrics["dual_softmax"]["temperature"] == 0.05 and metrics["chance"]["R@1"] == 0.25
    assert torch.equal(plain, retrieval_ranks(video, text))


def test_qa_metrics_count_out_of_vocabulary_answers_as_wrong():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    mc = task_metrics("multiple_choice", {"logits": logits, "labels": torch.tensor([1, 0, 0, 0])})
    assert mc == {"accuracy": 0.75, "chance": 0.5, "num_items": 4}
    cls = task_metrics("classification", {"logits": logits, "labels": torch.tensor([1, 0, -1, 1])})
    assert cls["accuracy"] == 0.5 and cls["chance"] == 0.5  # label -1 can never be predicted


def test_span_metrics_against_brute_force_runs():
    """IoU of the run of frames with the largest summed margin; chance = the mean over every run."""
    gen = torch.Generator().manual_seed(0)
    frames = 7
    labels = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0], [-100] * 7, [0, 0, 0, 0, 0, 0, 1]])
    logits = torch.randn(4, frames, 2, generator=gen)
    got = span_metrics(logits, labels)
    runs = [(s, e) for s in range(frames) for e in range(s, frames)]

    def iou(run, truth):
        pred = set(range(run[0], run[1] + 1))
        return len(pred & truth) / len(pred | truth)

    best, chance, whole = [], [], []
    for i in (0, 1, 3):  # item 2 has no span
        truth = {t for t in range(frames) if labels[i, t] == 1}
        margin = (logits[i, :, 1] - logits[i, :, 0]).tolist()
        run = max(runs, key=lambda r: sum(margin[r[0]: r[1] + 1]))
        best.append(iou(run, truth))
        chance.append(sum(iou(r, truth) for r in runs) / len(runs))
        whole.append(len(truth) / frames)
    assert got["items"] == 3
    assert got["iou"] == pytest.approx(sum(best) / 3) and got["chance_iou"] == pytest.approx(sum(chance) / 3)
    assert got["whole_video_iou"] == pytest.approx(sum(whole) / 3)
    # A head whose margin is positive exactly on the annotated frames finds every span.
    exact = torch.stack([torch.zeros(4, frames), torch.where(labels == 1, 1.0, -1.0)], dim=-1)
    assert span_metrics(exact, labels)["iou"] == 1.0
    # task_metrics reports it beside the accuracy, and the report's table shows it with its chance.
    mc = task_metrics("multiple_choice", {"logits": torch.eye(4), "labels": torch.arange(4), "span_logits": exact, "span_labels": labels})
    assert mc["span"]["iou"] == 1.0 and mc["accuracy"] == 1.0
    table = report_table("how2qa", mc, {}, benchmark=False)
    assert f"| span IoU | 100.0 | {100 * mc['span']['chance_iou']:.1f} |" in table
    assert "span" not in task_metrics("multiple_choice", {"logits": torch.eye(2), "labels": torch.arange(2), "span_logits": torch.zeros(2, 3, 2), "span_labels": torch.full((2, 3), -100)})


def test_finetune_config_checks_and_inputs():
    assert input_names(FinetuneConfig(task="didemo")) == ("cache", "pretrain1")
    assert input_names(FinetuneConfig(task="how2qa")) == ("cache", "pretrain2")
    assert input_names(FinetuneConfig(task="violin", init="scratch")) == ("cache",)
    with pytest.raises(ConfigError, match="unknown task 'msrvtt'"):
        FinetuneConfig(task="msrvtt")
    with pytest.raises(ConfigError, match="release_checkpoint"):
        FinetuneConfig(task="cmd", init="release")
    assert set(BENCHMARKS) == {"activitynet", "didemo", "queryd", "cmd", "how2qa", "violin", "anet-qa"}
    assert set(TASKS) - set(BENCHMARKS) == {"retrieval", "multiple-choice", "classification"}


def test_generic_tasks_start_from_the_stage_their_kind_needs_and_name_no_paper():
    assert input_names(FinetuneConfig(task="retrieval")) == ("cache", "pretrain1")
    assert input_names(FinetuneConfig(task="multiple-choice")) == ("cache", "pretrain2")
    assert input_names(FinetuneConfig(task="classification")) == ("cache", "pretrain2")
    for name in ("retrieval", "multiple-choice", "classification"):
        assert not TASKS[name].benchmark and not TASKS[name].paper
    qa = report_table("classification", {"accuracy": 0.5, "chance": 0.25}, {}, benchmark=False)
    assert "paper" not in qa and "| accuracy | 50.0 | 25.0 |" in qa
    assert "LF-VILA (paper)" in report_table("violin", {"accuracy": 0.5, "chance": 0.5}, {})
    # --help names every task
    from typer.testing import CliRunner

    from lfvila_cli.main import app

    text = " ".join(CliRunner().invoke(app, ["finetune", "--help"]).output.split())
    assert all(name in text for name in TASKS), text


def _items(*tasks, split="train"):
    from lfvila_cli.data.corpus import Sample, Segment

    return [Sample(f"s{i}", "v.mp4", 4.0, [Segment(0.0, 4.0, "a")], split, dict(t)) for i, t in enumerate(tasks)]


def test_generic_classification_counts_its_classes(tmp_path):
    corpus = tmp_path / "samples.jsonl"
    assert class_count(corpus, _items({"statement": "x", "label": 0}, {"statement": "y", "label": 3})) == 4
    with pytest.raises(DataError, match="at least two classes"):
        class_count(corpus, _items({"statement": "x", "label": 0}))
    (tmp_path / "answers.json").write_text('["yes", "no", "maybe"]')
    assert class_count(corpus, _items({"statement": "x", "label": 0})) == 3  # the vocabulary wins


def test_generic_multiple_choice_takes_the_items_candidate_count():
    three = {"question": "q", "candidates": ["a", "b", "c"], "answer": 0}
    five = {"question": "q", "candidates": list("abcde"), "answer": 4}
    assert candidate_count(_items(three, three, five)) == 3
    assert candidate_count(_items(five)) == 5


def test_jsonl_text_answers_become_classes(tmp_path):
    from lfvila_cli.data.corpus import read_corpus
    from lfvila_cli.data.prepare import PrepareConfig, prepare

    seg = [{"start": 0.0, "end": 2.0, "text": "a"}]
    records = [
        {"id": "a", "video": "v.mp4", "segments": seg, "question": "colour?", "answer": "Red"},
        {"id": "b", "video": "v.mp4", "segments": seg, "question": "colour?", "answer": "blue"},
        {"id": "c", "video": "v.mp4", "segments": seg, "question": "colour?", "answer": "red "},
        {"id": "d", "video": "v.mp4", "segments": seg, "question": "colour?", "answer": "green", "split": "val"},
        {"id": "e", "video": "v.mp4", "segments": seg, "question": "colour?", "answer": "blue", "split": "test"},
        {"id": "f", "video": "v.mp4", "segments": seg, "statement": "it is red", "label": 1},  # its own label: kept
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    cfg = PrepareConfig(source="jsonl")
    cfg.jsonl.path = str(path)
    prepare(cfg, out)
    assert json.loads((out / "answers.json").read_text()) == ["red", "blue"]  # train answers, most frequent first
    labels = {s.id: s.task["label"] for s in read_corpus(out / "samples.jsonl")}
    assert labels == {"a": 0, "b": 1, "c": 0, "d": -1, "e": 1, "f": 1}
    # every text answer outside train: no classes to learn
    path.write_text(json.dumps({**records[3]}) + "\n")
    with pytest.raises(DataError, match="none is in the train split"):
        prepare(cfg, tmp_path / "out2")


def test_prepare_counts_paragraphs_too_short_to_pre_train_on(tmp_path, caplog):
    from lfvila_cli.data.prepare import PrepareConfig, prepare
    from lfvila_cli.stages.prepare import describe

    def paragraph(i, n):
        return {"id": f"p{i}", "video": "v.mp4", "segments": [{"start": k, "end": k + 1, "text": f"s{k}"} for k in range(n)]}

    path = tmp_path / "c.jsonl"
    question = {"id": "q", "video": "v.mp4", "segments": [{"start": 0, "end": 1, "text": "a"}], "statement": "x", "label": 0}
    path.write_text("".join(json.dumps(r) + "\n" for r in (paragraph(0, 1), paragraph(1, 3), paragraph(2, 4), question)))
    cfg = PrepareConfig(source="jsonl")
    cfg.jsonl.path = str(path)
    with caplog.at_level("WARNING"):
        summary = prepare(cfg, tmp_path / "out")
    assert summary["short_paragraphs"] == 2  # 1 and 3 segments; the QA item is not a paragraph
    assert "2 of 3 paragraphs have fewer than 4 segments" in caplog.text
    assert describe(summary).endswith("2 too short to pre-train on")


# --- every task end to end --------------------------------------------------------------------------

SIZE = {"train_videos": 8, "val_videos": 2, "test_videos": 2, "max_clips": 5, "height": 64, "width": 96}
FRAMES = {"frames_per_segment": 8, "height": 64, "width": 96}
CHUNKS = {**FRAMES, "segment_mode": "chunks", "num_chunks": 4}
QUICK = {"train": {"micro_batch": 4, "max_steps": 2}, "val_every": 1, "loader": {"flip_prob": 0.0}}


def _pipeline(path: Path, stages: list[tuple[str, dict]]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"stages": [{"stage": s, "config": c} for s, c in stages]}))
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny example corpus, its frames, and pre-trained stage-1 and stage-2 models."""
    root = tmp_path_factory.mktemp("ft")
    wd = Workdir(root / "wd")
    results = run_pipeline(wd, _pipeline(root / "pre.yaml", [
        ("prepare", {"source": "example", "example": SIZE}),
        ("cache", FRAMES),
        ("pretrain1", {"train": {"micro_batch": 4, "max_steps": 2}, "val_every": 0}),
        ("pretrain2", {"train": {"micro_batch": 4, "max_steps": 2}, "val_every": 0}),
    ]), progress=False, echo=lambda line: None)
    assert [r.status for r in results] == ["done"] * 4
    return root, wd, results[0].artifact


def _run(root: Path, wd: Workdir, name: str, stages: list[tuple[str, dict]]):
    lines: list[str] = []
    results = run_pipeline(wd, _pipeline(root / f"{name}.yaml", stages), progress=False, echo=lines.append)
    assert all(r.status in ("done", "up to date") for r in results), lines
    return results, lines


@pytest.mark.slow
@pytest.mark.parametrize("task", ["activitynet", "didemo", "queryd", "cmd"])
def test_retrieval_tasks_finetune_and_evaluate(pretrained, task):
    root, wd, _ = pretrained
    results, lines = _run(root, wd, f"ret-{task}", [
        ("prepare", {"source": "example", "example": SIZE}),
        ("cache", CHUNKS),
        ("finetune", {"task": task, **QUICK}),
        ("evaluate", {"dual_softmax": 0.05}),
    ])
    finetuned, evaluated = results[2].artifact, results[3].artifact
    selection = json.loads((finetuned.path / "selection.json").read_text())
    assert selection["metric"] == "val text-to-video R@1" and 1 <= selection["step"] <= 2
    val = [json.loads(line) for line in (finetuned.path / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    assert {r["step"] for r in val} == {1, 2}  # val_every=1: after each step, never on test
    assert selection["value"] == max(r["selected_on"] for r in val)
    assert finetuned.summary["init"]["loaded"] > 0 and finetuned.summary["init"]["left_out"] > 0  # stage-1 heads left out
    metrics = json.loads((evaluated.path / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["split"] == "test" and metrics["num_videos"] == 4
    for direction in ("text_to_video", "video_to_text"):
        assert set(metrics[direction]) == {"R@1", "R@5", "R@10", "R@50", "MedR", "MnR"}
        assert set(metrics["dual_softmax"][direction]) == set(metrics[direction])
    report = (evaluated.path / "report.md").read_text()
    assert "LF-VILA (paper)" in report and "chance" in report and "dual softmax" in report
    assert f"{TASKS[task].paper['R@1']:.1f}" in report
    assert (evaluated.path / "similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert f"evaluate: done" in lines[-1] and "text→video R@1" in lines[-1]


@pytest.mark.slow
def test_zero_shot_retrieval_from_stage_one_draws_the_alignment_figure(pretrained):
    root, wd, _ = pretrained
    results, _ = _run(root, wd, "zero", [
        ("prepare", {"source": "example", "example": SIZE}),
        ("cache", CHUNKS),
        ("evaluate", {"model": "pretrain1", "task": "queryd"}),
    ])
    evaluated = results[2].artifact
    assert evaluated.summary["zero_shot"] and "pretrain1" in evaluated.manifest["inputs"]
    assert (evaluated.path / "alignment.png").is_file() and "zero-shot" in (evaluated.path / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["how2qa", "violin"])
def test_example_qa_tasks_finetune_and_evaluate(pretrained, task):
    root, wd, _ = pretrained
    results, _ = _run(root, wd, f"qa-{task}", [
        ("prepare", {"source": "example", "example": {**SIZE, "task": task}}),
        ("cache", CHUNKS),
        ("finetune", {"task": task, **QUICK, "max_subtitles": 1}),
        ("evaluate", {}),
    ])
    finetuned, evaluated = results[2].artifact, results[3].artifact
    assert "pretrain2" in finetuned.manifest["inputs"] and finetuned.summary["selection"]["metric"] == "val accuracy"
    fresh = finetuned.summary["init"]["fresh"]
    assert fresh and all(name.endswith("_head") for name in fresh), fresh  # only the new head is fresh
    metrics = json.loads((evaluated.path / "metrics.json").read_text())
    # 4 test videos (2 + twins), 2 questions or 2 statement pairs each
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num_items"] == (8 if task == "how2qa" else 16)
    assert metrics["chance"] == (0.25 if task == "how2qa" else pytest.approx(0.5))
    if task == "how2qa":
        losses = [json.loads(line) for line in (finetuned.path / "metrics.jsonl").read_text().splitlines()]
        assert all("loss/span" in r and "loss/choice" in r for r in losses if r["split"] == "train")
        span = metrics["span"]  # the span head's IoU against the answer clip, and a random run's
        assert span["items"] == 8 and 0.0 <= span["iou"] <= 1.0 and 0.0 < span["chance_iou"] < span["whole_video_iou"]
        assert "span IoU" in (evaluated.path / "report.md").read_text()
        assert any("span/iou" in r for r in losses if r["split"] == "val")


@pytest.mark.slow
def test_anet_qa_through_the_authors_jsonl_reader_and_scratch_init(pretrained, tmp_path):
    """ActivityNet-QA shape from the authors' JSON Lines (their class indices + vocabulary), on
    the example's videos, trained from scratch (no pre-training input at all)."""
    root, wd, corpus = pretrained
    items = [json.loads(line) for line in (corpus.path / "how2qa.jsonl").read_text().splitlines()]
    vocabulary = sorted({it["candidates"][it["answer"]] for it in items})
    files = {}
    for split in ("train", "val", "test"):
        path = tmp_path / f"{split}.jsonl"
        with open(path, "w") as f:
            for it in (it for it in items if it["split"] == split):
                answer = vocabulary.index(it["candidates"][it["answer"]])
                f.write(json.dumps({"video_name": Path(it["video"]).stem, "question": it["question"], "answer": answer}) + "\n")
        files[str(path)] = split
    (tmp_path / "answers.json").write_text(json.dumps(vocabulary))
    source = {"task": "anet-qa", "files": files, "video_root": str(corpus.path / "videos"), "answers": str(tmp_path / "answers.json")}
    results, _ = _run(root, wd, "anetqa", [
        ("prepare", {"source": "lfvila-jsonl", "lfvila_jsonl": source}),
        ("cache", CHUNKS),
        ("finetune", {"task": "anet-qa", "init": "scratch", **QUICK}),
        ("evaluate", {"split": "val"}),
    ])
    finetuned, evaluated = results[2].artifact, results[3].artifact
    assert finetuned.manifest["inputs"].keys() == {"cache"} and finetuned.summary["num_labels"] == len(vocabulary)
    config = json.loads((finetuned.path / "config.json").read_text())
    assert config["heads"]["num_labels"] == len(vocabulary)
    # what a loader needs without the pipeline: the class, the task, the answers, the input
    assert config["architectures"] == ["LfvilaForClassification"] and config["task"] == "anet-qa"
    assert config["id2label"] == {str(i): answer for i, answer in enumerate(vocabulary)}
    assert {k: config["preprocessing"][k] for k in ("frames", "height", "width")} == {"frames": 32, "height": 64, "width": 96}
    import lfvila_cli

    model = lfvila_cli.load(finetuned.path, device="cpu")
    answered = model.answer(corpus.path / items[0]["video"], items[0]["question"])
    assert answered["label"] == vocabulary[answered["answer"]] and len(answered["scores"]) == len(vocabulary)
    metrics = json.loads((evaluated.path / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["num_items"] == 8  # 4 val videos (2 + twins) × 2 questions


@pytest.mark.slow
def test_finetune_resumes_with_its_validation_history_and_best_weights(pretrained, tmp_path):
    """A run stopped after 2 of 4 steps and resumed ends where an uninterrupted run ends: the
    same final weights, every validation record once, the best of all four selected."""
    from lfvila_cli.data.corpus import CORPUS_FILE
    from lfvila_cli.train.finetune import run_finetune
    from lfvila_cli.model.pretrained import load_weights

    root, wd, _ = pretrained
    results, _ = _run(root, wd, "resume", [("prepare", {"source": "example", "example": SIZE}), ("cache", CHUNKS)])
    corpus, store = results[0].artifact.path / CORPUS_FILE, str(results[1].artifact.path / "frames.zarr")
    init = wd.resolve("pretrain1").path

    def config(steps: int) -> FinetuneConfig:
        from lfvila_cli.pipeline.stage import resolve_config
        from lfvila_cli.stages import get_stage

        layer = {"task": "didemo", **QUICK, "train": {"micro_batch": 4, "max_steps": steps, "checkpoint_every": 1}}
        return resolve_config(get_stage("finetune"), layers=[layer])

    whole = run_finetune(config(4), corpus, store, tmp_path / "whole", init_from=init, progress=False)
    run_finetune(config(2), corpus, store, tmp_path / "split", init_from=init, progress=False)
    resumed = run_finetune(config(4), corpus, store, tmp_path / "split", init_from=init, progress=False, resume="auto")
    assert resumed["steps"] == whole["steps"] == 4
    val = [json.loads(line) for line in (tmp_path / "split" / "run" / "val_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in val] == [1, 2, 3, 4]
    assert resumed["selection"] == whole["selection"]
    a, b = load_weights(tmp_path / "whole" / "model.safetensors"), load_weights(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
def test_task_data_that_does_not_fit_is_a_one_line_error(pretrained):
    from lfvila_cli.errors import DataError, LfvilaError

    root, wd, corpus = pretrained
    qa = [("prepare", {"source": "example", "example": {**SIZE, "task": "how2qa"}}), ("cache", CHUNKS)]
    # Retrieval on How2QA items: the example's config says what it holds, so this fails before work ...
    with pytest.raises(ConfigError, match=r"didemo reads paragraphs, but input cache \(stages\[1\]\) holds the multiple-choice items"):
        _run(root, wd, "misfit-kind", qa + [("finetune", {"task": "didemo", **QUICK})])
    # ... and a jsonl corpus not prepared yet says nothing: every item is refused as "a QA item" when loaded.
    items = [("prepare", {"source": "jsonl", "jsonl": {"path": str(corpus.path / "how2qa.jsonl")}}), ("cache", CHUNKS)]
    with pytest.raises(DataError, match="no usable retrieval items .*a QA item, not a paragraph"):
        _run(root, wd, "misfit-kind-jsonl", items + [("finetune", {"task": "didemo", **QUICK})])
    # 2 + 7 sentence slots per candidate text: more than the paragraph encoder's 8.
    with pytest.raises(ConfigError, match="config key 'max_subtitles': 9 sentence slots per text, more than the model's 8"):
        _run(root, wd, "misfit-slots", qa + [("finetune", {"task": "how2qa", **QUICK, "max_subtitles": 7})])
    # 8 chunks × 8 frames: more frames than the cross-modal encoder's 32.
    with pytest.raises(LfvilaError, match="8 chunks × 8 = 64 frames, more than the model's fusion.max_frames=32"):
        _run(root, wd, "misfit-frames", [qa[0], ("cache", {**CHUNKS, "num_chunks": 8}), ("finetune", {"task": "how2qa", **QUICK})])


@pytest.mark.slow
def test_evaluate_defaults_to_the_cache_the_model_was_fine_tuned_on(pretrained):
    from typer.testing import CliRunner

    from lfvila_cli.main import app

    root, wd, _ = pretrained
    results, _ = _run(root, wd, "ret-activitynet", [
        ("prepare", {"source": "example", "example": SIZE}),
        ("cache", CHUNKS),
        ("finetune", {"task": "activitynet", **QUICK}),
    ])
    retrieval_cache, model = results[1].artifact, results[2].artifact
    _run(root, wd, "latest-qa", [("prepare", {"source": "example", "example": {**SIZE, "task": "how2qa"}}), ("cache", CHUNKS)])
    assert wd.resolve("cache").key != retrieval_cache.key  # the latest cache is now the QA one
    out = CliRunner().invoke(app, ["evaluate", "--workdir", str(wd.root), "--model", model.key[:16], "--split", "val"])
    assert out.exit_code == 0, out.output
    evaluated = wd.resolve("evaluate")
    assert evaluated.manifest["inputs"]["cache"] == retrieval_cache.key and "activitynet: fine-tuned, val split" in out.output
