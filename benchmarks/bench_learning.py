"""The honest learning check of stage 1: does ``lfvila-tiny`` learn long-form alignment on the
bundled example, and does MTC help it tell temporal order?

Builds (or, with ``--dir``, reuses) the quickstart's example corpus and 64×96 frame store through
the project's own stages, then runs ``run_pretrain`` (the real Trainer) with the quickstart's
stage-1 recipe (``stages/quickstart.yaml``: 300 steps of 16), with the
multimodal temporal contrastive loss on (``objectives.mtc_weight`` 0.25, docs/method.md §4) and off (0),
``--seeds`` seeds each (the seed sets the initialisation, the data order and augmentation, and
the MTC draws), and reports on the val split, for the model at the end of training:

* paragraph→video R@1 (and R@5, MedR) over every val video, with its chance level 1/N;
* temporal-order accuracy: how often a paragraph is closer to its own video than to the video's
  reordered twin (same events, another order; chance 0.5);
* the untrained model's figures (the same, before the first step) as a baseline.

The val split is the quickstart's videos plus more (``--val-videos`` base videos, default 100,
each with its reordered twin: 200 paragraphs): the example draws every video from its own
seed, so the training videos, and therefore training, are the quickstart's whatever the val
split holds, while the order check rests on 200 paragraphs instead of 24. The summary gives
each row's spread over seeds, the sampling noise of one run's accuracy (binomial, on that many
paragraphs), and MTC on minus off paired by seed with its 95% confidence interval (Student's t
over the seeds).

    python benchmarks/bench_learning.py                        # 2 × 3 runs, ~20 min on 2 cores
    python benchmarks/bench_learning.py --seeds 1 --epochs 4   # a quick look
    python benchmarks/bench_learning.py --first-seed 3 --include seeds012.json   # 3 more seeds; the summary over all 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import build_data, quickstart_layer  # noqa: E402
from seeds import binomial_sd, confidence_interval, mean_sd  # noqa: E402

from lfvila_cli.config import resolve  # noqa: E402
from lfvila_cli.train.pretrain import PretrainConfig, run_pretrain  # noqa: E402

METRICS = ("R@1", "R@5", "MedR", "temporal_order_accuracy")


def run_one(corpus: Path, store: str, out_dir: Path, mtc_weight: float, seed: int, args) -> dict:
    overrides = [
        f"objectives.mtc_weight={mtc_weight}",
        f"objectives.seed={seed}",
        f"train.seed={seed}",
        f"loader.seed={seed}",
        "val_every=0",
        "val_max_samples=0",
    ] + ([f"train.epochs={args.epochs}"] if args.epochs is not None else [])
    cfg = resolve(PretrainConfig, layers=[quickstart_layer("pretrain1")], overrides=overrides + list(args.set or []))
    started = time.perf_counter()
    summary = run_pretrain(cfg, corpus, store, out_dir, progress=False)
    val, before = summary["val"], summary.get("val_untrained", {})
    row = {
        "mtc_weight": mtc_weight,
        "seed": seed,
        "steps": summary["steps"],
        "minutes": (time.perf_counter() - started) / 60,
        "chance_R@1": val.get("chance_R@1"),
        "pairs": val.get("temporal_order_pairs"),
        "final_vpc": summary["final_losses"].get("vpc"),
        **{k: val.get(k) for k in METRICS},
        **{f"untrained {k}": before.get(k) for k in METRICS},
    }
    print(
        f"  mtc {mtc_weight:<4} seed {seed}: R@1 {row['R@1']:.3f} (chance {row['chance_R@1']:.3f}, untrained "
        f"{row['untrained R@1']:.3f}), R@5 {row['R@5']:.3f}, MedR {row['MedR']:.1f}, temporal order "
        f"{row['temporal_order_accuracy']:.3f} ({row['pairs']} paragraphs; untrained {row['untrained temporal_order_accuracy']:.3f}), "
        f"{row['steps']} steps in {row['minutes']:.1f} min",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="work directory for the data and runs (default: a temporary one)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds − 1")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the quickstart's)")
    parser.add_argument("--workers", type=int, default=2, help="cache workers")
    parser.add_argument("--val-videos", type=int, default=100, help="val base videos, each with a twin (the quickstart: 12)")
    parser.add_argument("--set", action="append", help="extra PretrainConfig override, e.g. train.lr=3e-4 (repeatable)")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    parser.add_argument(
        "--include", type=Path, action="append", default=[],
        help="an earlier run's --json whose seeds join the summary (repeatable; e.g. seeds 0-2 beside --first-seed 3)",
    )
    args = parser.parse_args(argv)

    root = args.dir or Path(tempfile.mkdtemp(prefix="lfvila-bench-learning-"))
    print(f"data and runs in {root}")
    corpus, store = build_data(root, args.workers, prepare=[f"example.val_videos={args.val_videos}"])
    rows = []
    for mtc_weight in (0.25, 0.0):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            rows.append(run_one(corpus, store, root / "runs" / f"mtc{mtc_weight}-seed{seed}", mtc_weight, seed, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    for path in args.include:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        ours = {(r["mtc_weight"], r["seed"]) for r in rows}
        clash = sorted({r["seed"] for r in earlier if (r["mtc_weight"], r["seed"]) in ours})
        if clash:
            raise SystemExit(f"{path}: seeds {clash} were run again here; include only other seeds")
        setting = {(r["steps"], r["pairs"], r["chance_R@1"]) for r in earlier} - {(r["steps"], r["pairs"], r["chance_R@1"]) for r in rows}
        if setting:
            raise SystemExit(f"{path}: runs of another setting (steps, val paragraphs, chance R@1) {sorted(setting)}; include only runs of this one")
        rows = earlier + rows
    seeds = sorted({r["seed"] for r in rows})

    chance = rows[0]["chance_R@1"]
    print(f"\nstage 1, lfvila-tiny, {rows[0]['steps']} steps per run, val split of {round(1 / chance)} videos; mean ± sd over seeds {seeds}\n")
    print("| MTC | val R@1 (chance %.3f) | val R@5 | MedR | temporal-order accuracy (chance 0.5) | untrained R@1 | untrained order |" % chance)
    print("|---|---|---|---|---|---|---|")
    for mtc_weight in (0.25, 0.0):
        group = [r for r in rows if r["mtc_weight"] == mtc_weight]
        cells = [mean_sd([r[k] for r in group]) for k in ("R@1", "R@5", "MedR", "temporal_order_accuracy", "untrained R@1", "untrained temporal_order_accuracy")]
        print(f"| {'on (0.25)' if mtc_weight else 'off'} | " + " | ".join(cells) + " |")
    for key, name in (("temporal_order_accuracy", "temporal-order accuracy"), ("R@1", "val R@1")):
        on = {r["seed"]: r[key] for r in rows if r["mtc_weight"]}
        off = {r["seed"]: r[key] for r in rows if not r["mtc_weight"]}
        diffs = [on[seed] - off[seed] for seed in sorted(on) if seed in off]
        print(f"MTC on − off, {name}, paired by seed: {confidence_interval(diffs)}")
    pairs = rows[0]["pairs"] or 0
    if pairs:
        p_order = statistics.mean(r["temporal_order_accuracy"] for r in rows)
        print(f"sampling noise of one run's temporal-order accuracy: sd {binomial_sd(p_order, pairs):.3f} ({pairs} paragraphs)")
    return rows


if __name__ == "__main__":
    main()
