"""Event probe: do the video encoder's frozen features tell which event each clip shows?

    python benchmarks/bench_event_probe.py --workdir lfvila-work

The How2QA-shaped questions need each candidate's event ("the circle moves left.") found in the
video before any order can matter. This benchmark asks whether the video features carry the
event at all, apart from the cross-modal layers that have to find it: a linear classifier
(multinomial logistic regression on standardised features, Adam, 500 full-batch steps) predicts
each clip's kind of event (move left/right/up/down, grow, shrink, spin, turn: 8 kinds) from the
frozen video encoder's final map over the clip's frames: the mean over its first half of frames,
over its second half, and their difference, flattened. It trains on the training videos' clips,
picks its weight decay (1e-4, 1e-3, 1e-2) on the val videos' clips and reports accuracy on the
test videos' clips, against always guessing the most common kind.

Videos are ``bench_how2qa.py``'s (the quickstart's 192 training videos; 12 val and 96 test base
videos with their reordered twins), frames as its fine-tune reads them (4 chunks × 8 frames, no
augmentation). Features (``--inits``):

* ``pretrained`` — the quickstart's stage-1 video encoder (frozen in stage 2, so stage 2's too);
* ``scratch`` — the same architecture at random (seed 0);
* ``pixels`` — no encoder: each frame's normalised pixels averaged to 8×12 per channel.

Then, with no training at all, whether stage 1's aligned embeddings find a candidate's event in
the video: each test question's candidates are scored by their best cosine between the
candidate's sentence embedding (the candidate alone as a one-sentence text) and any of the
video's clip embeddings (MTC's projections; 4 per video as fine-tuning reads it), and the best
candidate is the answer. A model that knew which events each video holds would reach the presence
bar (``example.presence_accuracy``); one that knows nothing, chance (0.25).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_how2qa import PIPELINE, how2qa_layers, stage  # noqa: E402  (sets HF_HUB_OFFLINE and the import path)

from lfvila_cli.api import load_model  # noqa: E402
from lfvila_cli.config import resolve  # noqa: E402
from lfvila_cli.data.corpus import read_corpus  # noqa: E402
from lfvila_cli.data.example import COLOURS, PHRASES, event_phrase, presence_accuracy  # noqa: E402
from lfvila_cli.data.task_data import TaskDataset, tokenize_texts  # noqa: E402
from lfvila_cli.data.tokenizer import load_tokenizer  # noqa: E402
from lfvila_cli.pipeline.artifacts import Workdir  # noqa: E402
from lfvila_cli.stages import run_pipeline  # noqa: E402
from lfvila_cli.train.config import FinetuneConfig  # noqa: E402
from lfvila_cli.train.finetune import build_task_model  # noqa: E402

KINDS = sorted(PHRASES)
SPLITS = ("train", "val", "test")
DECAYS = (1e-4, 1e-3, 1e-2)
PIXEL_GRID = (8, 12)


def event_kind(sentence: str) -> int:
    """The index in KINDS of an example sentence's event ("the red circle turns blue." -> turn)."""
    phrase = event_phrase(sentence).split(" ")
    for kind, wordings in PHRASES.items():
        for wording in wordings:
            words = wording.split(" ")
            if len(words) == len(phrase) and all(w == p or (w == "{colour}" and p in COLOURS) for w, p in zip(words, phrase)):
                return KINDS.index(kind)
    raise ValueError(f"no event kind matches {sentence!r}")


def clip_features(frame_features: torch.Tensor, times: torch.Tensor, segments) -> list[tuple[torch.Tensor, int]]:
    """(T, D) per-frame features -> per clip with at least 2 frames: (first-half mean, second-half
    mean, their difference) concatenated, and the clip's event kind."""
    out = []
    for segment in segments:
        frames = [i for i, t in enumerate(times.tolist()) if segment.start <= t < segment.end]
        if len(frames) < 2:
            continue
        half = len(frames) // 2
        first, second = frame_features[frames[:half]].mean(0), frame_features[frames[half:]].mean(0)
        out.append((torch.cat([first, second, second - first]), event_kind(segment.text)))
    return out


def read_videos(samples: list, store: str, tokenizer, loader) -> dict[str, list[tuple]]:
    """Per split, each video once (its questions share it): (sample, frames (T, 3, H, W), times (T,)),
    read and normalised as the fine-tune's evaluation reads them."""
    first = {}
    for sample in samples:
        first.setdefault(sample.video, sample)
    videos = {}
    for split in SPLITS:
        ds = TaskDataset([s for s in first.values() if s.split == split], store, tokenizer, "multiple_choice", loader, train=False, max_subtitles=0)
        videos[split] = [(sample, ds[i]["frames"], ds[i]["times"]) for i, sample in enumerate(ds.samples)]
    return videos


def features(per_frame, videos: dict[str, list[tuple]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per split: (clip features (N, 3·D), event kinds (N,)), one entry per clip of each video;
    ``per_frame`` maps a video's frames (T, 3, H, W) to (T, D)."""
    out = {}
    with torch.no_grad():
        for split, rows in videos.items():
            clips = [clip for sample, frames, times in rows for clip in clip_features(per_frame(frames), times, sample.segments)]
            out[split] = (torch.stack([c[0] for c in clips]), torch.tensor([c[1] for c in clips]))
    return out


def frame_encoder(init: str, layer: dict, pretrain2, tokenizer):
    """``features``' per-frame map of an init: the video encoder's final map flattened, or pooled pixels."""
    if init == "pixels":
        return lambda frames: torch.nn.functional.adaptive_avg_pool2d(frames, PIXEL_GRID).flatten(1)
    cfg = resolve(FinetuneConfig, layers=[layer], overrides=[f"init={init}", "train.seed=0"])
    model, _, _ = build_task_model(cfg, pretrain2.path, tokenizer, None)
    model.eval()
    return lambda frames: model.video_encoder(frames[None]).tokens[0].flatten(1)


def linear_probe(data: dict, seed: int = 0) -> dict:
    """Logistic regression per weight decay; the decay with the best val accuracy scores test."""
    x_train, y_train = data["train"]
    mean, sd = x_train.mean(0), x_train.std(0) + 1e-6
    scaled = {split: ((x - mean) / sd, y) for split, (x, y) in data.items()}
    best = None
    for decay in DECAYS:
        torch.manual_seed(seed)
        classifier = torch.nn.Linear(x_train.shape[1], len(KINDS))
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2, weight_decay=decay)
        for _ in range(500):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(classifier(scaled["train"][0]), scaled["train"][1]).backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = {split: (classifier(x).argmax(1) == y).float().mean().item() for split, (x, y) in scaled.items()}
        if best is None or accuracy["val"] > best["accuracy"]["val"]:
            best = {"decay": decay, "accuracy": accuracy}
    return best


def zero_shot_presence(pretrain1, questions: list, videos: list[tuple], max_tokens: int) -> float:
    """Accuracy on ``questions`` of picking the candidate whose sentence embedding best matches any
    clip embedding of the video (``videos``: ``read_videos``' rows of their split)."""
    tokenizer = load_tokenizer(str(pretrain1.path / "tokenizer"))
    model = load_model(pretrain1.path, device="cpu")
    correct = 0
    with torch.no_grad():
        clips = {sample.video: model.encode_video(frames[None]).clip_embeddings[0] for sample, frames, _ in videos}  # (M, D) each
        for question in questions:
            # Each candidate alone, as a one-sentence text (the candidate slot of a multiple-choice item).
            ids, mask = tokenize_texts(tokenizer, question.task["candidates"], max_tokens)
            sentences = model.encode_text(ids[:, None], mask[:, None]).sentence_embeddings[:, 0]
            correct += int((sentences @ clips[question.video].T).amax(1).argmax() == question.task["answer"])
    return correct / len(questions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="lfvila-work")
    parser.add_argument("--inits", nargs="+", choices=["pretrained", "scratch", "pixels"], default=["pretrained", "scratch", "pixels"])
    args = parser.parse_args()

    wd = Workdir(args.workdir)
    results = run_pipeline(wd, PIPELINE, progress=False, echo=lambda line: print(f"  {line}", flush=True))
    pretrain2 = next(r.artifact for r in results if r.stage == "pretrain2")
    layers = how2qa_layers()
    corpus = stage(wd, "prepare", layers["prepare"], ["example.qa_per_video=6", "example.test_videos=96"], {})
    cache = stage(wd, "cache", layers["cache"], [], {"prepare": corpus})
    samples = list(read_corpus(corpus.path / "samples.jsonl"))
    store = str(cache.path / "frames.zarr")

    loader = resolve(FinetuneConfig, layers=[layers["finetune"]], overrides=[]).loader
    tokenizer = load_tokenizer(str(pretrain2.path / "tokenizer"))
    videos = read_videos(samples, store, tokenizer, loader)

    print(f"\nEvent kind of each clip from frozen features ({len(KINDS)} kinds), linear probe; the video encoder of stage 2 {pretrain2.key[:16]} (stage 1's, frozen)\n")
    print("| features | train clips | test clips | most common kind (test) | train accuracy | test accuracy | weight decay (val) |")
    print("|---|---|---|---|---|---|---|")
    for init in args.inits:
        data = features(frame_encoder(init, layers["finetune"], pretrain2, tokenizer), videos)
        counts = torch.bincount(data["test"][1], minlength=len(KINDS))
        best = linear_probe(data)
        print(
            f"| {init} | {len(data['train'][1])} | {len(data['test'][1])} | {counts.max().item() / counts.sum().item():.3f} | "
            f"{best['accuracy']['train']:.3f} | **{best['accuracy']['test']:.3f}** | {best['decay']:g} ({best['accuracy']['val']:.3f}) |",
            flush=True,
        )
    pretrain1 = next(r.artifact for r in results if r.stage == "pretrain1")
    test = [s for s in samples if s.split == "test"]
    print(
        f"\nZero-shot, stage 1 {pretrain1.key[:16]}'s sentence and clip embeddings: "
        f"{zero_shot_presence(pretrain1, test, videos['test'], loader.max_tokens):.3f} "
        f"of {len(test)} test questions (chance 0.25, presence bar {presence_accuracy(test):.3f})"
    )

if __name__ == "__main__":
    main()
