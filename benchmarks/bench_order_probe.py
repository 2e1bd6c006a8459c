"""Order probe of the How2QA-shaped task: can the cross-modal layers learn the *order* of events
when they are trained ten times longer than ``bench_how2qa.py`` can afford?

    python benchmarks/bench_order_probe.py --workdir lfvila-work --seeds 0 1 2 --train-videos 768 --steps 2000

``bench_how2qa.py`` runs the real fine-tune (``lfvila finetune --task how2qa``): about 1 s a step on
two CPU cores, so 200 steps (under 3 epochs of its 1152 questions; the paper fine-tunes How2QA for 30)
is what six seeds per start cost. This probe isolates the part that has to learn order. The video
encoder is frozen and run once per video (no augmentation); its final maps are kept in memory, and
only the text encoder, the cross-modal layers and the multiple-choice head train, for ``--steps``
steps of 16 questions at peak lr ``--lr`` (the engine's warm-up and linear decay, ``lr_factor``, and
its AdamW groups, ``parameter_groups``; no gradient accumulation, no validation-based selection). The
test split is scored every ``--every`` steps, for the curve only, and the figure reported is the last
step's. The data are ``bench_how2qa.py``'s, built the same way in the same work directory.

Starts (``--inits``):

* ``pretrained`` — the quickstart's stage-2 model and its tokenizer (its frozen video encoder is the
  stage-1 one).
* ``scratch`` — the same architecture at random (the seed's), the video encoder frozen at random too;
  the stage-2 model's tokenizer (a vocabulary only).
* ``oracle`` — the pre-trained text and cross-modal layers, with each frame's video tokens replaced by
  its clip's narration: the sum of fixed random vectors (N(0, 1), one per word) of the sentence that
  narrates the frame's clip, scaled to unit sd. Presence and order are then in the video tokens
  exactly; if the cross-modal layers learn no faster from these, the video features are not what
  holds them back.

``--set KEY=VALUE`` adds a fine-tune override (``choice_head_init=vtm``: the candidate scorer starts as
stage 2's VTM head); ``--steps 0`` scores the start as it is (with ``choice_head_init=vtm``, VTM's
zero-shot judgement of each candidate).

Prints per run the test accuracy at each ``--every`` step and at the end, the training batches'
choice loss and accuracy over the last 200 steps, then per start mean ± sd over the seeds, the
sampling sd of one run's accuracy, the presence bar (``example.presence_accuracy``: knowing which
events occur and not their order), and 95% confidence intervals of accuracy − the presence bar per
start and of pre-trained − each other start, paired by seed. ``--json`` writes this invocation's
runs; ``--include`` adds earlier JSON files of the same steps, lr and corpus to the summary (``--seeds`` with no
seeds and ``--include`` only summarises), so seeds can run as separate invocations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_how2qa import PIPELINE, how2qa_layers, presence_bar, stage  # noqa: E402  (sets HF_HUB_OFFLINE and the import path)
from seeds import binomial_sd, confidence_interval, mean_sd  # noqa: E402

from lfvila_cli.config import resolve  # noqa: E402
from lfvila_cli.data.corpus import read_corpus  # noqa: E402
from lfvila_cli.data.task_data import TaskDataset  # noqa: E402
from lfvila_cli.data.tokenizer import load_tokenizer  # noqa: E402
from lfvila_cli.objectives import multiple_choice_loss  # noqa: E402
from lfvila_cli.pipeline.artifacts import Workdir  # noqa: E402
from lfvila_cli.stages import run_pipeline  # noqa: E402
from lfvila_cli.train.config import FinetuneConfig  # noqa: E402
from lfvila_cli.train.finetune import build_task_model  # noqa: E402
from lfvila_cli.train.schedule import lr_factor, parameter_groups  # noqa: E402

BATCH = 16
SPLITS = ("train", "test")


def narration_tokens(sample, times: torch.Tensor, shape: tuple[int, ...], words: dict, generator: torch.Generator) -> torch.Tensor:
    """The oracle's final map (T, h, w, C) for one video: per frame its clip sentence as a bag of word vectors."""
    rows = []
    for t in times.tolist():
        segment = next((s for s in sample.segments if s.start <= t < s.end), sample.segments[-1])
        vectors = []
        for word in segment.text.lower().strip(".").split():
            if word not in words:
                words[word] = torch.randn(shape[-1], generator=generator)
            vectors.append(words[word])
        row = torch.stack(vectors).sum(0)
        rows.append(row / row.std())
    return torch.stack(rows)[:, None, None, :].expand(-1, *shape[1:]).contiguous()


def probe(init: str, seed: int, args, layer: dict, corpus, cache, pretrain2) -> dict:
    began = time.perf_counter()
    overrides = [f"train.seed={seed}", f"loader.seed={seed}", f"init={'scratch' if init == 'scratch' else 'pretrained'}", *args.set]
    cfg = resolve(FinetuneConfig, layers=[layer], overrides=overrides)
    tokenizer = load_tokenizer(str(pretrain2.path / "tokenizer"))
    model, _, _ = build_task_model(cfg, pretrain2.path, tokenizer, None)
    samples = list(read_corpus(corpus.path / "samples.jsonl"))
    store = str(cache.path / "frames.zarr")
    # The frozen video encoder's final map, once per video (the questions of a video share it);
    # an item keeps its texts and labels, not its frames.
    data: dict[str, tuple[list, list]] = {}
    maps: dict[str, torch.Tensor] = {}
    words: dict[str, torch.Tensor] = {}
    shape: tuple[int, ...] = ()
    generator = torch.Generator().manual_seed(1000 + seed)
    model.eval()
    with torch.no_grad():
        for split in SPLITS:
            ds = TaskDataset([s for s in samples if s.split == split], store, tokenizer, "multiple_choice", cfg.loader, train=False, max_subtitles=0)
            items = []
            for i, sample in enumerate(ds.samples):
                item = ds[i]
                if sample.video not in maps:
                    # The oracle needs the encoder only once, for the map's shape.
                    if not (init == "oracle" and shape):
                        video_map = model.video_encoder(item["frames"][None]).tokens[0]
                        shape = tuple(video_map.shape)
                    if init == "oracle":
                        video_map = narration_tokens(sample, item["times"], shape, words, generator)
                    maps[sample.video] = video_map
                item.pop("frames", None)
                items.append(item)
            data[split] = (ds.samples, items)
    for param in model.video_encoder.parameters():
        param.requires_grad_(False)

    def batch(split: str, indices: list[int]):
        samples_, items = data[split]
        picked = [items[i] for i in indices]
        stack = lambda key: torch.stack([it[key] for it in picked])  # noqa: E731
        video = torch.stack([maps[samples_[i].video] for i in indices])
        return video, stack("input_ids"), stack("attention_mask"), stack("label"), stack("span_labels")

    def forward(video, ids, mask):
        choices = ids.shape[1]
        fused = model.fuse(video.repeat_interleave(choices, dim=0), ids.flatten(0, 1), mask.flatten(0, 1))
        return model.multiple_choice_head(fused.pooled, choices, fused.frame_states)

    def test_accuracy() -> float:
        model.eval()
        correct = 0
        n = len(data["test"][1])
        with torch.no_grad():
            for start in range(0, n, 64):
                video, ids, mask, label, _ = batch("test", list(range(start, min(n, start + 64))))
                correct += int((forward(video, ids, mask).choice_logits.argmax(-1) == label).sum())
        model.train()
        return correct / n

    train = cfg.train
    optimizer = torch.optim.AdamW(
        parameter_groups(model.named_parameters(), train.weight_decay), lr=args.lr, betas=tuple(train.betas), eps=train.eps
    )
    params = [p for p in model.parameters() if p.requires_grad]
    warmup = max(1, round(train.warmup_ratio * args.steps))
    order = torch.Generator().manual_seed(seed)
    n_train = len(data["train"][1])
    queue: list[int] = []
    history, curve = [], []
    model.train()
    for step in range(args.steps):
        if len(queue) < BATCH:
            queue = torch.randperm(n_train, generator=order).tolist()
        indices, queue = queue[:BATCH], queue[BATCH:]
        video, ids, mask, label, span = batch("train", indices)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, warmup, args.steps, train.final_lr_ratio)
        out = forward(video, ids, mask)
        losses = multiple_choice_loss(out, label, span, cfg.span_weight)
        optimizer.zero_grad()
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        optimizer.step()
        history.append((losses["choice"].item(), (out.choice_logits.argmax(-1) == label).float().mean().item()))
        if (step + 1) % args.every == 0 and step + 1 < args.steps:
            curve.append((step + 1, test_accuracy()))
            print(f"  {init} seed {seed} step {step + 1}: test accuracy {curve[-1][1]:.3f}", flush=True)
    last = np.array(history[-200:]) if history else np.full((1, 2), np.nan)  # --steps 0: the start as it is
    run = {
        "init": init, "seed": seed, "corpus": corpus.key[:16], "set": args.set, "steps": args.steps, "lr": args.lr, "accuracy": test_accuracy(), "items": len(data["test"][1]),
        "curve": curve, "train_choice_loss_last200": float(last[:, 0].mean()), "train_accuracy_last200": float(last[:, 1].mean()),
        "minutes": (time.perf_counter() - began) / 60,
    }
    print(
        f"{init} seed {seed}: test accuracy {run['accuracy']:.3f} on {run['items']} after {args.steps} steps; last 200 training "
        f"steps: choice loss {run['train_choice_loss_last200']:.3f}, accuracy {run['train_accuracy_last200']:.3f}; {run['minutes']:.1f} min",
        flush=True,
    )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="lfvila-work")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="none: only summarise --include")
    parser.add_argument("--inits", nargs="+", choices=["pretrained", "scratch", "oracle"], default=["pretrained", "scratch"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak lr")
    parser.add_argument("--every", type=int, default=400, help="score the test split every this many steps (the curve)")
    parser.add_argument("--qa-per-video", type=int, default=6)
    parser.add_argument("--test-videos", type=int, default=96)
    parser.add_argument("--train-videos", type=int, default=768, help="training videos (the quickstart's 192 and 576 more)")
    parser.add_argument("--include", nargs="*", default=[], help="JSON files of earlier runs of the same settings to summarise with these")
    parser.add_argument("--set", action="append", default=[], help="extra finetune override (repeatable), e.g. choice_head_init=vtm")
    parser.add_argument("--json", default="", help="write this invocation's runs here")
    args = parser.parse_args()

    wd = Workdir(args.workdir)
    results = run_pipeline(wd, PIPELINE, progress=False, echo=lambda line: print(f"  {line}", flush=True))
    pretrain2 = next(r.artifact for r in results if r.stage == "pretrain2")
    layers = how2qa_layers()
    sizes = [f"example.qa_per_video={args.qa_per_video}", f"example.test_videos={args.test_videos}", f"example.train_videos={args.train_videos}"]
    corpus = stage(wd, "prepare", layers["prepare"], sizes, {})
    cache = stage(wd, "cache", layers["cache"], [], {"prepare": corpus})

    runs = [probe(init, seed, args, layers["finetune"], corpus, cache, pretrain2) for init in args.inits for seed in args.seeds]
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")
    for path in args.include:
        earlier = json.loads(Path(path).read_text())
        clash = [(r["init"], r["seed"]) for r in earlier if any((r["init"], r["seed"]) == (x["init"], x["seed"]) for x in runs)]
        if clash:
            raise SystemExit(f"--include {path}: runs {clash} are already in the summary")
        if any((r["steps"], r["lr"]) != (args.steps, args.lr) for r in earlier):
            raise SystemExit(f"--include {path}: runs of other steps or lr than --steps {args.steps} --lr {args.lr}")
        if any(r.get("set", []) != args.set for r in earlier):
            raise SystemExit(f"--include {path}: runs of other --set overrides than {args.set}")
        if any(r.get("corpus") != corpus.key[:16] for r in earlier):
            raise SystemExit(f"--include {path}: runs on another corpus than {corpus.key[:16]} (other questions)")
        runs = runs + earlier
    if not runs:
        raise SystemExit("no runs: give --seeds or --include")
    inits = list(dict.fromkeys(r["init"] for r in runs))
    by = {(r["init"], r["seed"]): r for r in runs}
    print(f"\nHow2QA-shaped test split: {runs[0]['items']} questions (chance 0.25); {args.steps} steps of {BATCH} at peak lr {args.lr}; video encoder frozen")
    print(f"pre-trained start: stage 2 {pretrain2.key[:16]} (the quickstart's)\n")
    print("| start | seeds | test accuracy, last step | mean ± sd | train choice loss, last 200 steps | train accuracy, last 200 steps |")
    print("|---|---|---|---|---|---|")
    for init in inits:
        rows = [r for r in runs if r["init"] == init]
        print(
            f"| {init} | {', '.join(str(r['seed']) for r in rows)} | {', '.join(format(r['accuracy'], '.3f') for r in rows)} | "
            f"{mean_sd([r['accuracy'] for r in rows])} | {mean_sd([r['train_choice_loss_last200'] for r in rows])} | "
            f"{mean_sd([r['train_accuracy_last200'] for r in rows])} |"
        )
    p = statistics.mean(r["accuracy"] for r in runs)
    print(f"\nsampling noise of one run's accuracy: sd {binomial_sd(p, runs[0]['items']):.3f} ({runs[0]['items']} questions)")
    bar = presence_bar(corpus)
    print(f"presence bar (knows which events occur, not their order): {bar:.3f}")
    for init in inits:
        print(f"{init}: accuracy − chance: {confidence_interval([r['accuracy'] - 0.25 for r in runs if r['init'] == init])}")
        print(f"{init}: accuracy − presence bar: {confidence_interval([r['accuracy'] - bar for r in runs if r['init'] == init])}")
    for init in inits:
        seeds = [s for (i, s) in by if i == init and ("pretrained", s) in by]
        if init != "pretrained" and seeds:
            diffs = [by["pretrained", s]["accuracy"] - by[init, s]["accuracy"] for s in seeds]
            print(f"pre-trained − {init}, accuracy, paired by seed {seeds}: {confidence_interval(diffs)}")


if __name__ == "__main__":
    main()
