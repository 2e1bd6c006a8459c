"""Benchmark of pre-training throughput on the CPU: data loader against training steps, fp32
against bf16, for ``lfvila-tiny`` stage 1 (VPC + MTC) on the bundled example.

Builds (or, with ``--dir``, reuses) the example corpus and its frame store through the project's
own stages (the quickstart's ``prepare`` and ``cache``: 64×96, 8 frames per clip, what the tiny
preset expects), then measures in one run, with ``torch.set_num_threads(--threads)`` and the
quickstart's stage-1 recipe (``stages/quickstart.yaml``):

(a) loader only, for the store of each of ``--codecs`` (``jpeg``, the default codec, and ``raw``):
    ``make_loader(PretrainDataset(train=True))`` as ``run_pretrain`` builds it
    (same micro-batch, augmentation, normalisation and tokenisation), timed in one process:
    the work each of run_pretrain's DataLoader workers (``workers``, 1 by default) does while
    the training process computes; over ``--loader-batches`` batches after one untimed first
    batch (it opens the Zarr store).
(b) training, fp32: ``run_pretrain`` (the real ``Trainer`` on DeepSpeed ZeRO 2 + ``stage1_loss``)
    for ``--steps`` optimizer steps; the first ``--warmup`` steps are dropped. Two rates per
    run over the steps after warm-up:
      compute  the Trainer's own ``samples_per_s`` in ``run/metrics.jsonl``: forward, backward,
               optimizer step and loss read-back; the time to fetch the micro-batch is *not*
               in it (the Trainer starts its clock after the batch is in hand)
      wall     time between consecutive metric records: everything a step costs, the
               wait for the next micro-batch included
(c) the same in bf16 (DeepSpeed bf16: weights, activations and gradients in bf16, fp32 master
    weights in the optimizer).

Every rate is the micro-batch over the *median* time per batch or step (robust to a neighbour's
load on a shared machine); the table also shows the mean rate (samples over total time), and
``--json`` the per-step times. Ratios use the medians.

Targets (issue): loader samples/s >= 3x the training rate (the loader is never the bottleneck;
checked against the faster *compute* rate of (b) and (c), the stricter reading), and the
bf16 / fp32 step-time ratio. Validation is reduced to ``--val-samples`` samples (run_pretrain
still scores the untrained model before and the trained one after training: outside the
per-step rates).

    python benchmarks/bench_train.py                     # ~2-3 min on 2 cores (first run builds the data)
    python benchmarks/bench_train.py --dir /tmp/lfvila-bench-train --steps 30 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lfvila_cli.pipeline.artifacts import Workdir  # noqa: E402
from lfvila_cli.config import resolve  # noqa: E402
from lfvila_cli.data.corpus import read_corpus  # noqa: E402
from lfvila_cli.data.loader import PretrainDataset, make_loader  # noqa: E402
from lfvila_cli.data.tokenizer import load_tokenizer, train_wordpiece_tokenizer  # noqa: E402
from lfvila_cli.pipeline.runner import run_stage  # noqa: E402
from lfvila_cli.pipeline.stage import resolve_config  # noqa: E402
from lfvila_cli.stages import STAGES, load_pipeline  # noqa: E402
from lfvila_cli.stages.cache import frame_store_url  # noqa: E402
from lfvila_cli.stages.prepare import corpus_file  # noqa: E402
from lfvila_cli.train import engine  # noqa: E402
from lfvila_cli.train.pretrain import PretrainConfig, run_pretrain  # noqa: E402

# The quickstart pipeline: its example corpus and 64×96 frame store (8 frames per clip: what the
# tiny preset expects) and its stage-1 recipe are what the benchmarks measure.
QUICKSTART = Path(__file__).resolve().parents[1] / "stages" / "quickstart.yaml"


def quickstart_layer(stage_name: str) -> dict:
    """The config a stage gets in the quickstart pipeline file."""
    for entry in load_pipeline(QUICKSTART):
        if entry.stage.name == stage_name:
            return entry.config
    raise KeyError(f"{QUICKSTART} has no {stage_name} stage")


def build_data(root: Path, workers: int, codec: str = "jpeg", prepare: Sequence[str] = ()) -> tuple[Path, str]:
    """The quickstart's corpus and frame store (frames stored with ``codec``), via its prepare
    and cache stages (a hit when ``root`` already holds them); ``prepare``: overrides of the
    prepare stage's config (e.g. ``example.val_videos=100``)."""
    wd = Workdir(root)
    echo = lambda line: print(f"  {line}")  # noqa: E731
    produced = {}
    for name, overrides in (("prepare", list(prepare)), ("cache", [f"workers={workers}", f"codec={codec}"])):
        stage = STAGES[name]
        config = resolve_config(stage, layers=[quickstart_layer(name)], overrides=overrides)
        inputs = {n: produced[n] for n in stage.inputs}
        produced[name] = run_stage(wd, stage, config, inputs, progress=False, echo=echo).artifact
    return corpus_file(produced["prepare"]), frame_store_url(produced["cache"])


def bench_loader(dataset: PretrainDataset, micro_batch: int, batches: int) -> dict:
    """Seconds per batch of the loader alone, epoch after epoch as the Trainer asks for them."""
    def stream():
        for epoch in itertools.count():
            yield from make_loader(dataset, micro_batch, epoch=epoch)  # in this process: one worker's rate

    it = stream()
    next(it)  # untimed: opens the store
    seconds = []
    for _ in range(batches):
        start = time.perf_counter()
        batch = next(it)
        seconds.append(time.perf_counter() - start)
    assert batch["frames"].shape[0] == micro_batch
    median = statistics.median(seconds)
    return {"batches": batches, "batch_ms_median": 1e3 * median, "samples_per_s": micro_batch / median,
            "samples_per_s_mean": micro_batch * batches / sum(seconds), "frames_shape": list(batch["frames"].shape)}


@contextmanager
def step_clock(times: list[float]):
    """Record when the Trainer logs each step (``log_every`` = 1: once per optimizer step)."""
    original = engine.Trainer._log

    def timed(self, record):
        times.append(time.perf_counter())
        return original(self, record)

    engine.Trainer._log = timed
    try:
        yield
    finally:
        engine.Trainer._log = original


def quickstart_pretrain_config() -> PretrainConfig:
    """The quickstart's stage-1 recipe (``stages/quickstart.yaml``)."""
    return resolve(PretrainConfig, layers=[quickstart_layer("pretrain1")])


def bench_training(precision: str, corpus: Path, store: str, tokenizer_dir: Path, out_dir: Path, args) -> dict:
    base = quickstart_pretrain_config()
    cfg = dataclasses.replace(
        base,
        model="lfvila-tiny",
        tokenizer=str(tokenizer_dir),
        val_every=0,
        val_max_samples=args.val_samples,
        train=dataclasses.replace(
            base.train, precision=precision, micro_batch=args.micro_batch, max_steps=args.steps,
            epochs=10**6, checkpoint_every=10**6,
        ),
    )
    shutil.rmtree(out_dir, ignore_errors=True)  # the Trainer appends to run/metrics.jsonl
    stamps: list[float] = []
    started = time.perf_counter()
    with step_clock(stamps):
        summary = run_pretrain(cfg, corpus, store, out_dir, progress=False)
    total = time.perf_counter() - started
    records = [json.loads(line) for line in (out_dir / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records] == list(range(1, args.steps + 1)), "one metric record per step expected"
    kept = records[args.warmup :]
    compute_s = [args.micro_batch / r["samples_per_s"] for r in kept]  # per step
    wall_s = [b - a for a, b in zip(stamps[args.warmup - 1 :], stamps[args.warmup :])]
    return {
        "precision": precision,
        "steps_timed": len(kept),
        "compute_samples_per_s": args.micro_batch / statistics.median(compute_s),
        "compute_step_ms_median": 1e3 * statistics.median(compute_s),
        "compute_samples_per_s_mean": args.micro_batch * len(compute_s) / sum(compute_s),
        "wall_samples_per_s": args.micro_batch / statistics.median(wall_s),
        "wall_step_ms_median": 1e3 * statistics.median(wall_s),
        "wall_samples_per_s_mean": args.micro_batch * len(wall_s) / sum(wall_s),
        "compute_step_ms": [round(1e3 * x, 1) for x in compute_s],
        "first_step_ms": 1e3 * args.micro_batch / records[0]["samples_per_s"],
        "loss_first": records[0]["loss/total"],
        "loss_last": records[-1]["loss/total"],
        "skipped_steps": summary["skipped_steps"],
        "run_seconds": total,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="keep the work directory here (data reused)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per training run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run left out of the rates")
    parser.add_argument("--micro-batch", type=int, default=None,
                        help="samples per step (default: the quickstart's stage-1 micro-batch)")
    parser.add_argument("--loader-batches", type=int, default=40, help="timed loader batches")
    parser.add_argument("--val-samples", type=int, default=8, help="val_max_samples of the training runs")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for everything")
    parser.add_argument("--codecs", default="jpeg,raw",
                        help="frame codecs whose stores the loader reads (the first also feeds training)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.micro_batch is None:
        args.micro_batch = quickstart_pretrain_config().train.micro_batch
    if not 1 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in [1, --steps), got {args.warmup} with --steps {args.steps}")

    torch.set_num_threads(args.threads)
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="lfvila-bench-train-")
        args.dir = Path(tmp.name)
    try:
        t = time.perf_counter()
        print("data (prepare --source example, cache at 64x96, 8 frames per clip):")
        codecs = args.codecs.split(",")
        stores = {codec: build_data(args.dir / "work", workers=args.threads, codec=codec)[1] for codec in codecs}
        corpus, store = build_data(args.dir / "work", workers=args.threads, codec=codecs[0])
        print(f"  ready in {time.perf_counter() - t:.1f} s")

        cfg = quickstart_pretrain_config()
        train_samples = [s for s in read_corpus(corpus) if s.split == "train"]
        tokenizer_dir = args.dir / "tokenizer"
        if (tokenizer_dir / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(tokenizer_dir, local_files_only=True)
        else:
            texts = [seg.text for s in train_samples for seg in s.segments]
            tokenizer = train_wordpiece_tokenizer(texts, cfg.tokenizer_vocab_size, tokenizer_dir)
        loaders = {}
        for codec, codec_store in stores.items():
            dataset = PretrainDataset(train_samples, codec_store, tokenizer, cfg.loader, train=True, video_root=corpus.parent)
            loaders[codec] = bench_loader(dataset, args.micro_batch, args.loader_batches)
            print(f"  loader ({codec} frames): {loaders[codec]['samples_per_s']:.1f} samples/s, batch frames {loaders[codec]['frames_shape']}")
        print(f"{len(dataset)} train samples; micro-batch {args.micro_batch}; torch threads {torch.get_num_threads()}; "
              f"loader timed in one process (what each of run_pretrain's {cfg.workers} DataLoader worker(s) does)")
        loader = loaders[codecs[0]]
        runs = {}
        for precision in ("fp32", "bf16"):
            out_dir = args.dir / f"pretrain-{precision}"
            runs[precision] = r = bench_training(precision, corpus, store, tokenizer_dir, out_dir, args)
            print(f"  train {precision}: {r['compute_samples_per_s']:.2f} samples/s compute, "
                  f"{r['wall_samples_per_s']:.2f} wall; loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}; "
                  f"run {r['run_seconds']:.1f} s")
        threads_after = torch.get_num_threads()
    finally:
        if tmp is not None:
            tmp.cleanup()

    fp32, bf16 = runs["fp32"], runs["bf16"]
    fastest = max(fp32["compute_samples_per_s"], bf16["compute_samples_per_s"])
    loader_ratio = loader["samples_per_s"] / fastest
    bf16_ratio = bf16["compute_step_ms_median"] / fp32["compute_step_ms_median"]
    ref = fp32["compute_samples_per_s"]
    rows = [(f"data loader only, {codec} frames", r["samples_per_s"], r["samples_per_s_mean"], r["batch_ms_median"])
            for codec, r in loaders.items()]
    for name, r in (("fp32", fp32), ("bf16", bf16)):
        rows.append((f"train {name}, compute (Trainer's samples_per_s)", r["compute_samples_per_s"],
                     r["compute_samples_per_s_mean"], r["compute_step_ms_median"]))
        rows.append((f"train {name}, wall (incl. loading)", r["wall_samples_per_s"], r["wall_samples_per_s_mean"],
                     r["wall_step_ms_median"]))

    print(f"\nlfvila-tiny stage 1, micro-batch {args.micro_batch} x 32 frames 64x96, torch threads {args.threads} "
          f"(after the runs: {threads_after}), CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"{fp32['steps_timed']} timed steps per run after {args.warmup} warm-up")
    print("\n| path | samples/s (median) | samples/s (mean) | median ms per batch | ratio to train fp32 compute |")
    print("|---|---|---|---|---|")
    for name, median, mean, ms in rows:
        print(f"| {name} | {median:.2f} | {mean:.2f} | {ms:.0f} | {median / ref:.2f}x |")
    verdict = "PASS" if loader_ratio >= 3 else "FAIL"
    print(f"\nloader ({codecs[0]} frames) / training (faster compute rate) = {loader_ratio:.1f}x (target >= 3x): {verdict}")
    for codec, r in loaders.items():
        print(f"loader, {codec} frames: {1e3 / r['samples_per_s']:.1f} ms per sample (4 clips x 8 frames at 64x96, one worker)")
    print(f"bf16 / fp32 step time (median, compute) = {bf16_ratio:.2f} "
          f"({'bf16 faster' if bf16_ratio < 1 else 'bf16 slower'} on this CPU)")

    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loader": loader,
        "loaders": loaders,
        "train": runs,
        "loader_over_train": loader_ratio,
        "loader_target_met": loader_ratio >= 3,
        "bf16_over_fp32_step_time": bf16_ratio,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
