"""Learning check of fine-tuning (issue 5): the quickstart's two downstream tasks on the
example's TEST split, fine-tuned from the pre-trained models and from scratch, over seeds.

    python benchmarks/bench_finetune.py --workdir lfvila-work --seeds 0 1 2 --json result.json

Runs ``stages/quickstart.yaml`` in ``--workdir`` (stages already there are reused, so run the
quickstart first to share its pre-training), once per (seed, init) with
``finetune.train.seed=<seed>`` and ``finetune.loader.seed=<seed>`` and, for the baseline, ``finetune.init=scratch`` — the same data,
recipe and model selection on val; only the starting weights differ. Prints text→video R@1 (chance
1/48) and How2QA-shaped accuracy (chance 0.25) per run and the mean ± standard deviation per init.
The zero-shot stage-1 retrieval score is printed once (it does not depend on the seed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lfvila_cli.pipeline.artifacts import Workdir  # noqa: E402
from lfvila_cli.stages import run_pipeline  # noqa: E402

PIPELINE = Path(__file__).resolve().parents[1] / "stages" / "quickstart.yaml"


def run_once(workdir: Workdir, seed: int, init: str) -> dict:
    # train.seed draws the fresh weights, loader.seed the data order and augmentation: from a
    # pre-trained retrieval model (no fresh head, no dropout in lfvila-tiny) only the latter varies.
    overrides = [f"finetune.train.seed={seed}", f"finetune.loader.seed={seed}", f"finetune.init={init}"]
    started = time.perf_counter()
    results = run_pipeline(workdir, PIPELINE, overrides=overrides, progress=False, echo=print)
    evaluations = [r.artifact.summary for r in results if r.stage == "evaluate"]
    zero = next(e for e in evaluations if e["zero_shot"])
    retrieval = next(e for e in evaluations if not e["zero_shot"] and e["kind"] == "retrieval")
    qa = next(e for e in evaluations if e["kind"] == "multiple_choice")
    return {
        "seed": seed,
        "init": init,
        "minutes": (time.perf_counter() - started) / 60,
        "zero_shot_R@1": zero["metrics"]["text_to_video"]["R@1"],
        "R@1": retrieval["metrics"]["text_to_video"]["R@1"],
        "R@5": retrieval["metrics"]["text_to_video"]["R@5"],
        "MedR": retrieval["metrics"]["text_to_video"]["MedR"],
        "chance_R@1": retrieval["metrics"]["chance"]["R@1"],
        "videos": retrieval["metrics"]["num_videos"],
        "accuracy": qa["metrics"]["accuracy"],
        "chance_accuracy": qa["metrics"]["chance"],
        "items": qa["metrics"]["num_items"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="lfvila-work")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    runs = [run_once(workdir, seed, init) for init in ("pretrained", "scratch") for seed in args.seeds]
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")
    first = runs[0]
    print(f"\ntest split: {first['videos']} videos (chance R@1 {first['chance_R@1']:.3f}), {first['items']} questions (chance {first['chance_accuracy']:.2f})")
    print(f"zero-shot stage 1, text→video R@1: {first['zero_shot_R@1']:.3f}")
    print("| init | seed | text→video R@1 | R@5 | MedR | How2QA-shaped accuracy |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['init']} | {r['seed']} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['MedR']:.1f} | {r['accuracy']:.3f} |")
    for init in ("pretrained", "scratch"):
        rows = [r for r in runs if r["init"] == init]

        def stat(key: str) -> str:
            values = [r[key] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} ± {spread:.3f}"

        print(f"| {init} | mean ± sd | {stat('R@1')} | {stat('R@5')} | {stat('MedR')} | {stat('accuracy')} |")


if __name__ == "__main__":
    main()
