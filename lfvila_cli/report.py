"""Scoring a model on one split of a task, and its report (the body of the ``evaluate`` stage).

Inputs: a task's frame store (``cache``, chunks mode) and a model: a fine-tuned one
(``finetune``) or, for zero-shot paragraph→video retrieval, a pre-trained stage-1 model
(``pretrain1``). Outputs, in the evaluate artifact:

    metrics.json     the figures (retrieval: both directions, R@1/5/10/50, MedR, MnR, chance;
                     QA: accuracy, chance), the dual-softmax figures under their own key when asked
    report.md        a table of our figures beside the paper's (docs/method.md §6) and the chance level
    predictions.jsonl  per item: retrieval ranks in both directions, QA predicted / true answer
    similarity.png   retrieval: paragraph × video cosine similarity for up to ``heatmap_items`` items
    alignment.png    retrieval with a model that has local projections (stage 1, zero-shot):
                     sentence × clip similarity for ``alignment_videos`` videos — what MTC aligns

The split defaults to ``test``. Fine-tuning selected its model on ``val``; evaluating on test
never feeds back into a choice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from .config import check
from .errors import ConfigError, DataError
from .model.precision import check_precision
from .plots import pyplot
from .tasks import TASKS, candidate_count, task_spec

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PREDICTIONS_FILE = "predictions.jsonl"
SIMILARITY_PNG = "similarity.png"
ALIGNMENT_PNG = "alignment.png"


@dataclass
class EvaluateConfig:
    model: Literal["finetune", "pretrain1"] = "finetune"  # pretrain1 = zero-shot retrieval
    task: str = ""  # "" = the fine-tuned model's task; zero-shot: a retrieval task (paper figures)
    split: Literal["train", "val", "test"] = "test"
    batch: int = 8
    dual_softmax: float = 0.0  # > 0: also report retrieval re-scored by dual softmax at this temperature
    chunk: int = 1024  # queries ranked at a time
    heatmap_items: int = 24
    alignment_videos: int = 4
    # auto: bf16 where the hardware has it natively, else fp32; bf16; fp32 (the reference)
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_precision(self.precision, "precision")
        check(self.model in ("finetune", "pretrain1"), "model", f"expected finetune or pretrain1 (zero-shot), got {self.model!r}")
        check(self.split in ("train", "val", "test"), "split", f"expected train, val or test, got {self.split!r}")
        check(self.batch >= 1, "batch", f"must be >= 1, got {self.batch}")
        check(self.dual_softmax >= 0, "dual_softmax", f"must be >= 0 (0 = off), got {self.dual_softmax}")
        check(self.chunk >= 1, "chunk", f"must be >= 1, got {self.chunk}")
        check(self.heatmap_items >= 0 and self.alignment_videos >= 0, "heatmap_items", "figure sizes must be >= 0")
        if self.task:
            task_spec(self.task)


def run_evaluate(
    cfg: EvaluateConfig, corpus_path: Path, store_url: str, model_dir: Path, model_stage_config: dict, out_dir: Path
) -> dict[str, Any]:
    """Evaluate the model in ``model_dir`` (see the module docstring); returns the summary."""
    from .data.corpus import read_split
    from .data.loader_config import trained_loader_config
    from .data.task_data import TaskDataset, check_fit
    from .data.tokenizer import load_tokenizer
    from .evaluation import predict_task, ranks_chunked, task_metrics
    from .model.precision import resolve_precision
    from .model.pretrained import TOKENIZER_DIR, load_pretrained

    task = model_stage_config.get("task", "") if cfg.model == "finetune" else ""
    if cfg.model == "finetune":
        if cfg.task and cfg.task != task:
            raise ConfigError(f"config key 'task': the model was fine-tuned for {task!r}, not {cfg.task!r}")
    else:
        task = cfg.task or "activitynet"
        if task_spec(task).kind != "retrieval":
            raise ConfigError(f"config key 'task': zero-shot evaluation is paragraph-to-video retrieval; {task!r} is a QA task")
    spec = TASKS[task]
    samples = read_split(corpus_path, cfg.split)
    if not samples:
        raise DataError(f"{corpus_path}: no {cfg.split}-split samples to evaluate")
    tokenizer = load_tokenizer(model_dir / TOKENIZER_DIR, local_files_only=True)
    model = load_pretrained(model_dir)
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    loader_cfg = trained_loader_config(model_stage_config)
    subtitles = model_stage_config.get("max_subtitles", -1)
    heads = model.config.heads
    dataset = TaskDataset(
        samples, store_url, tokenizer, spec.kind, loader_cfg, train=False,
        max_subtitles=spec.max_subtitles if subtitles is None or subtitles < 0 else subtitles,
        num_labels=heads.num_labels or None, num_candidates=spec.num_candidates or candidate_count(samples),
    )
    check_fit(dataset, model.config, f"{corpus_path} ({cfg.split} split)")
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device)
    predicted = predict_task(model, dataset, cfg.batch, with_local=spec.kind == "retrieval", precision=precision)
    ranks = None
    if spec.kind == "retrieval":
        ranks = {
            "text_to_video": ranks_chunked(predicted["text"], predicted["video"], cfg.chunk),
            "video_to_text": ranks_chunked(predicted["video"], predicted["text"], cfg.chunk),
        }
    metrics = task_metrics(spec.kind, predicted, dual_softmax=cfg.dual_softmax or None, chunk=cfg.chunk, ranks=ranks)
    metrics.update({
        "task": task, "split": cfg.split, "model": cfg.model, "zero_shot": cfg.model == "pretrain1", "skipped": dict(dataset.skipped),
        "precision": precision, "device": device.type,
    })
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    ids = predicted["sample_ids"]
    with open(out_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as f:
        if ranks is not None:
            t2v, v2t = ranks["text_to_video"], ranks["video_to_text"]
            for i, sid in enumerate(ids):
                f.write(json.dumps({"id": sid, "text_to_video_rank": int(t2v[i]), "video_to_text_rank": int(v2t[i])}) + "\n")
        else:
            guess = predicted["logits"].argmax(-1)
            for i, sid in enumerate(ids):
                f.write(json.dumps({"id": sid, "predicted": int(guess[i]), "label": int(predicted["labels"][i])}) + "\n")
    figures = []
    if spec.kind == "retrieval" and cfg.heatmap_items:
        model_name = f"{'stage-1 model, zero-shot' if cfg.model == 'pretrain1' else 'fine-tuned model'} {Path(model_dir).name[:8]}"
        similarity_figure(predicted, ids, cfg.heatmap_items, out_dir / SIMILARITY_PNG, title=f"{task}, {cfg.split} split: {model_name}")
        figures.append(SIMILARITY_PNG)
    if spec.kind == "retrieval" and cfg.alignment_videos and "clips" in predicted:
        alignment_figure(predicted, ids, cfg.alignment_videos, out_dir / ALIGNMENT_PNG)
        figures.append(ALIGNMENT_PNG)
    notes = []
    if spec.kind == "retrieval" and "clips" not in predicted:
        notes.append("No sentence × clip figure: the fine-tuned retrieval model keeps only the global projections (VPC), as the release's did.")
    table = report_table(task, metrics, spec.paper, zero_shot=cfg.model == "pretrain1", benchmark=spec.benchmark)
    write_report(out_dir / REPORT_FILE, task, cfg, metrics, table, figures, notes, benchmark=spec.benchmark)
    return {
        "task": task, "split": cfg.split, "kind": spec.kind, "zero_shot": cfg.model == "pretrain1", "metrics": metrics, "table": table,
        "figures": figures, "precision": precision,
    }


# --------------------------------------------------------------------------------------- report


def _pct(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def report_table(task: str, metrics: dict, paper: dict, zero_shot: bool = False, benchmark: bool = True) -> str:
    """A Markdown table: our figures (percent), LF-VILA's reported (fine-tuned) ones for a paper
    benchmark, and chance."""
    if "accuracy" in metrics:
        rows = [("accuracy", _pct(metrics["accuracy"]), "—", _pct(metrics["chance"]))]
        span = metrics.get("span")
        if span:  # the How2QA span head (evaluation.span_metrics); chance: a random run of frames
            rows.append(("span IoU", _pct(span["iou"]), "—", _pct(span["chance_iou"])))
        if not benchmark:
            return "| metric | ours | chance |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {d} |" for a, b, _, d in rows) + "\n"
        header = "| metric | ours | LF-VILA (paper) | chance |\n|---|---|---|---|\n"
        return header + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows) + "\n"
    lines = ["| direction | R@1 | R@5 | R@10 | R@50 | MedR | MnR |", "|---|---|---|---|---|---|---|"]

    def row(name: str, m: dict) -> str:
        return f"| {name} | " + " | ".join(_pct(m.get(f"R@{k}")) for k in (1, 5, 10, 50)) + f" | {m['MedR']:.1f} | {m['MnR']:.1f} |"

    lines.append(row("text → video", metrics["text_to_video"]))
    lines.append(row("video → text", metrics["video_to_text"]))
    if "dual_softmax" in metrics:
        lines.append(row("text → video, dual softmax (re-scored, transductive)", metrics["dual_softmax"]["text_to_video"]))
        lines.append(row("video → text, dual softmax (re-scored, transductive)", metrics["dual_softmax"]["video_to_text"]))
    if paper:
        label = "LF-VILA (paper, fine-tuned), text → video" if zero_shot else "LF-VILA (paper), text → video"
        lines.append(f"| {label} | " + " | ".join(f"{paper[f'R@{k}']:.1f}" if f"R@{k}" in paper else "—" for k in (1, 5, 10, 50)) + " | — | — |")
    chance = metrics["chance"]
    lines.append("| chance | " + " | ".join(_pct(chance[f"R@{k}"]) for k in (1, 5, 10, 50)) + f" | {(metrics['num_videos'] + 1) / 2:.1f} | {(metrics['num_videos'] + 1) / 2:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(
    path: Path, task: str, cfg: EvaluateConfig, metrics: dict, table: str, figures: list[str], notes: list[str], benchmark: bool = True
) -> None:
    kind = "zero-shot (pre-trained stage 1, no fine-tuning)" if cfg.model == "pretrain1" else "fine-tuned"
    size = metrics.get("num_videos", metrics.get("num_items"))
    text = [
        f"# {task}: {kind}, {cfg.split} split",
        "",
        f"{size} {'videos' if 'num_videos' in metrics else 'items'}; figures in percent (MedR/MnR are ranks); "
        f"computed in {metrics.get('precision', 'fp32')} on the {metrics.get('device', 'cpu')}.",
        *(["The paper's figures are on the full benchmark with lfvila-base; ours are on this corpus and model."] if benchmark else []),
        "",
        table,
    ]
    if metrics.get("skipped"):
        text += [f"Skipped items (no usable frames): {metrics['skipped']}", ""]
    text += [f"![{name}]({name})" for name in figures]
    text += ["", *notes] if notes else []
    path.write_text("\n".join(text).rstrip() + "\n", encoding="utf-8")


def report_text_table(artifact_dir: Path) -> str:
    """The title and table of an evaluate artifact's report.md, and the report's path."""
    path = Path(artifact_dir) / REPORT_FILE
    text = path.read_text(encoding="utf-8")
    title = text.splitlines()[0].lstrip("# ")
    table = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    return f"{title}\n{table}\n(full report: {path})"


# -------------------------------------------------------------------------------------- figures


def similarity_figure(predicted: dict, ids: list[str], items: int, path: Path, title: str) -> None:
    """Paragraph × video cosine similarity of the first ``items`` items, titled ``title`` (the
    task, split and model) over what it shows; the true pairs (the diagonal) outlined, each
    paragraph's best video dotted."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    n = min(items, len(ids))
    sim = (predicted["text"][:n] @ predicted["video"][:n].t()).numpy()
    fig, ax = plt.subplots(figsize=(4.5 + 0.3 * n, 2.5 + 0.3 * n), dpi=100)
    image = ax.imshow(sim, cmap="viridis")
    for i in range(n):
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=1.0))
    best = sim.argmax(axis=1)
    ax.plot(best, range(n), ".", color="red", markersize=3)
    ax.set_xticks(range(n), ids[:n], rotation=90, fontsize=6)
    ax.set_yticks(range(n), ids[:n], fontsize=6)
    ax.set_xlabel("video")
    ax.set_ylabel("paragraph")
    ax.set_title(f"{title}\nparagraph × video cosine similarity\noutlined: true pairs; red dot: each paragraph's best video", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def alignment_figure(predicted: dict, ids: list[str], videos: int, path: Path) -> None:
    """Sentence × clip cosine similarity for the first ``videos`` videos: MTC wants each
    sentence closest to its own clip and closer to nearer clips."""
    plt = pyplot()
    n = min(videos, len(ids))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), dpi=100, squeeze=False)
    for i in range(n):
        mask = predicted["sentence_mask"][i]
        sim = (predicted["sentences"][i][mask] @ predicted["clips"][i].t()).numpy()
        ax = axes[0, i]
        image = ax.imshow(sim, cmap="viridis")
        ax.set_title(ids[i], fontsize=8)
        ax.set_xlabel("clip")
        ax.set_ylabel("sentence")
        ax.set_xticks(range(sim.shape[1]))
        ax.set_yticks(range(sim.shape[0]))
        fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")
    fig.suptitle("sentence × clip cosine similarity (what MTC aligns)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
