"""Learning check of the How2QA-shaped task: does fine-tuning learn the *order* of events, does
pre-training help, and does the span head find the answer clip?

    python benchmarks/bench_how2qa.py --workdir lfvila-work --seeds 0 1 2 --json how2qa.json

Runs ``stages/quickstart.yaml`` in ``--workdir`` first (every stage already there is reused, so
run the quickstart first to share its pre-training), then, in the same work directory, builds a
larger How2QA-shaped example from the same videos and more test videos (``--qa-per-video``
questions per video, 6 as in the quickstart; ``--test-videos`` base test videos instead of 24, each with
its reordered twin: 96 × 2 × 6 = 1152 test questions by default; the training videos are the
quickstart's, since the example draws each video from its own seed), caches its frames as the
quickstart does, and fine-tunes per seed and start: from the quickstart's stage-2 model (or, with
``--stage2 KEY=VALUE``, a stage 2 trained for this check from the quickstart's stage 1) and from
scratch (``init=scratch``: random weights, a tokenizer trained on the task's texts), with the
quickstart's How2QA recipe run for ``--steps`` steps (200) at peak lr ``--lr`` (2e-4), validated
4 times and selected on val accuracy, scored on test.

The example's questions ("what happens after X?") have one answer from the next clip, one
distractor from another clip of the same video and two events that never happen there (fewer
where a video leaves fewer): text alone gives 25%, telling present from absent events gives the
presence bar (``example.presence_accuracy`` of the test split, about 0.45), and only the order
gives more.

Prints per run the test accuracy, the span head's IoU with the answer clip (and a random run's,
``evaluation.span_metrics``), and the span loss at the first step and over the last 10 steps
(ln 2 = 0.693 means the head separates nothing); then mean ± sd per start, the sampling noise
of one run's accuracy on that many questions, and, each with its 95% confidence interval over
the seeds: pre-trained minus scratch paired by seed, and per start its accuracy minus the presence
bar and its span IoU minus a random run's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seeds import binomial_sd, confidence_interval, mean_sd  # noqa: E402

from lfvila_cli.data.corpus import read_corpus  # noqa: E402
from lfvila_cli.data.example import presence_accuracy  # noqa: E402
from lfvila_cli.pipeline.artifacts import Workdir  # noqa: E402
from lfvila_cli.pipeline.runner import run_stage  # noqa: E402
from lfvila_cli.pipeline.stage import resolve_config  # noqa: E402
from lfvila_cli.stages import STAGES, load_pipeline, run_pipeline  # noqa: E402

PIPELINE = Path(__file__).resolve().parents[1] / "stages" / "quickstart.yaml"
LN2 = 0.6931


def how2qa_layers() -> dict[str, dict]:
    """The quickstart's How2QA entries (its prepare, cache and finetune configs: the last ones) and its stage 2's."""
    entries = load_pipeline(PIPELINE)
    prepare = [e.config for e in entries if e.stage.name == "prepare" and e.config.get("example", {}).get("task") == "how2qa"][-1]
    finetune = [e.config for e in entries if e.stage.name == "finetune" and e.config.get("task") == "how2qa"][-1]
    cache = [e.config for e in entries if e.stage.name == "cache"][-1]
    pretrain2 = [e.config for e in entries if e.stage.name == "pretrain2"][-1]
    return {"prepare": prepare, "cache": cache, "finetune": finetune, "pretrain2": pretrain2}


def stage(wd: Workdir, name: str, layer: dict, overrides: list[str], inputs: dict):
    config = resolve_config(STAGES[name], layers=[layer], overrides=overrides)
    return run_stage(wd, STAGES[name], config, inputs, progress=False, echo=lambda line: print(f"  {line}", flush=True)).artifact


def presence_bar(corpus) -> float:
    """The test split's accuracy for a reader that knows which events each video holds, not their order."""
    return presence_accuracy([s for s in read_corpus(corpus.path / "samples.jsonl") if s.split == "test"])


def span_losses(finetuned) -> tuple[float, float]:
    """(span loss at step 1, mean over the last 10 training steps) of a fine-tune's records."""
    rows = [json.loads(line) for line in (finetuned.path / "metrics.jsonl").read_text().splitlines()]
    span = [r["loss/span"] for r in rows if r["split"] == "train"]
    return span[0], statistics.mean(span[-10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="lfvila-work")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps (the quickstart: 36)")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak lr (the commands' default; the quickstart's 36 steps: 5e-4)")
    parser.add_argument("--qa-per-video", type=int, default=6)
    parser.add_argument("--test-videos", type=int, default=96)
    parser.add_argument(
        "--train-videos", type=int, default=0,
        help="fine-tuning videos (default 0: the quickstart's 192; more adds videos the pre-training never saw)",
    )
    parser.add_argument("--inits", nargs="+", default=["pretrained", "scratch"])
    parser.add_argument("--set", action="append", default=[], help="extra finetune override (repeatable)")
    parser.add_argument(
        "--stage2", action="append", default=[],
        help="pretrain2 override (repeatable, e.g. train.epochs=15): the pre-trained start is a stage 2 trained "
             "for this check from the quickstart's stage 1 and layer with these overrides, not the quickstart's own",
    )
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    wd = Workdir(args.workdir)
    results = run_pipeline(wd, PIPELINE, progress=False, echo=lambda line: print(f"  {line}", flush=True))
    pretrain2 = next(r.artifact for r in results if r.stage == "pretrain2")
    layers = how2qa_layers()
    if args.stage2:
        clips = next(r.artifact for r in results if r.stage == "cache")
        pretrain1 = next(r.artifact for r in results if r.stage == "pretrain1")
        pretrain2 = stage(wd, "pretrain2", layers["pretrain2"], args.stage2, {"cache": clips, "pretrain1": pretrain1})
    sizes = [f"example.qa_per_video={args.qa_per_video}", f"example.test_videos={args.test_videos}"]
    corpus = stage(wd, "prepare", layers["prepare"], sizes + ([f"example.train_videos={args.train_videos}"] if args.train_videos else []), {})
    cache = stage(wd, "cache", layers["cache"], [], {"prepare": corpus})

    runs = []
    for init in args.inits:
        for seed in args.seeds:
            began = time.perf_counter()
            overrides = [
                f"train.seed={seed}", f"loader.seed={seed}", f"init={init}", f"train.max_steps={args.steps}",
                f"train.epochs={args.steps}", f"train.lr={args.lr}", f"val_every={max(1, args.steps // 4)}", *args.set,
            ]
            inputs = {"cache": cache, **({"pretrain2": pretrain2} if init == "pretrained" else {})}
            finetuned = stage(wd, "finetune", layers["finetune"], overrides, inputs)
            evaluated = stage(wd, "evaluate", {}, [], {"cache": cache, "finetune": finetuned})
            metrics = json.loads((evaluated.path / "metrics.json").read_text())
            first, last = span_losses(finetuned)
            span = metrics.get("span") or {}
            run = {
                "init": init, "seed": seed, "accuracy": metrics["accuracy"], "items": metrics["num_items"],
                "chance": metrics["chance"], "span_iou": span.get("iou"), "chance_iou": span.get("chance_iou"),
                "whole_video_iou": span.get("whole_video_iou"), "span_loss_first": first, "span_loss_last10": last,
                "selected_step": finetuned.summary.get("selection", {}).get("step"), "minutes": (time.perf_counter() - began) / 60,
            }
            runs.append(run)
            print(
                f"{init} seed {seed}: accuracy {run['accuracy']:.3f} on {run['items']}, span IoU {run['span_iou']:.3f} "
                f"(chance {run['chance_iou']:.3f}), span loss {first:.3f} -> {last:.3f}, {run['minutes']:.1f} min",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")

    first = runs[0]
    print(f"\nHow2QA-shaped test split: {first['items']} questions (chance {first['chance']:.2f}); {args.steps} fine-tuning steps; mean ± sd over seeds {args.seeds}")
    origin = "overrides " + ", ".join(args.stage2) if args.stage2 else "the quickstart's"
    print(f"pre-trained start: stage 2 {pretrain2.key[:16]} ({origin})\n")
    print("| start | test accuracy | span IoU | random-run IoU | whole-video IoU | span loss, step 1 | span loss, last 10 steps (ln 2 = 0.693) |")
    print("|---|---|---|---|---|---|---|")
    for init in args.inits:
        rows = [r for r in runs if r["init"] == init]
        cells = [mean_sd([r[k] for r in rows]) for k in ("accuracy", "span_iou", "chance_iou", "whole_video_iou", "span_loss_first", "span_loss_last10")]
        print(f"| {init} | " + " | ".join(cells) + " |")
    p = statistics.mean(r["accuracy"] for r in runs)
    print(f"\nsampling noise of one run's accuracy: sd {binomial_sd(p, first['items']):.3f} ({first['items']} questions)")
    bar = presence_bar(corpus)
    print(f"presence bar (knows which events occur, not their order): {bar:.3f}")
    if set(args.inits) >= {"pretrained", "scratch"}:
        by = {(r["init"], r["seed"]): r for r in runs}
        diffs = [by["pretrained", s]["accuracy"] - by["scratch", s]["accuracy"] for s in args.seeds]
        print(f"pre-trained − scratch, accuracy, paired by seed: {confidence_interval(diffs)}")
    for init in args.inits:
        rows = [r for r in runs if r["init"] == init]
        print(f"{init}: accuracy − chance: {confidence_interval([r['accuracy'] - r['chance'] for r in rows])}")
        print(f"{init}: accuracy − presence bar: {confidence_interval([r['accuracy'] - bar for r in rows])}")
        if all(r["span_iou"] is not None for r in rows):
            print(f"{init}: span IoU − a random run's: {confidence_interval([r['span_iou'] - r['chance_iou'] for r in rows])}")


if __name__ == "__main__":
    main()
