"""How much do the cross-modal encoder's video tokens differ between frames, layer by layer?

The How2QA span head classifies each frame's fused state as in or out of the answer's span;
it can only do so if those states differ between frames. This measures, on How2QA-shaped items
of a frame store, for each model given, at every step from the video encoder to the span head:

    final map        the video encoder's last tokens (B, T, h, w, C)
    pooled           max-pooled per frame to the 2×3 grid and projected (before any embedding)
    + space          plus the spatial embedding
    + time           plus the temporal embedding (before the LayerNorm)
    input (LN)       the cross-modal encoder's input, after the LayerNorm
    layer i          after each cross-modal layer
    frame states     the mean of each frame's tokens after the last layer (the span head's input)

and prints per step the *temporal ratio*: the standard deviation across frames (per token slot
and channel, averaged), divided by the standard deviation of all of the video's values there;
0 means every frame has the same state, and the figure is scale-free, so steps compare. ``sd``
is the same numerator unscaled. The text is each item's question and its first candidate.

    python benchmarks/bench_frame_states.py --corpus <how2qa prepare>/samples.jsonl \\
        --store <its chunks cache>/frames.zarr --model lfvila-tiny --model <pretrain2 artifact> \\
        --model lfvila-base:192x320 --items 8

A ``--model`` is a model directory (its weights) or a preset name (random weights, seeded with
``--seed``), optionally ``:HxW`` to resize the frames first (the base preset takes 192×320), and
``@STD`` to start its spatial and temporal embeddings at that standard deviation instead of
``fusion.TOKEN_EMBEDDING_STD`` (``lfvila-tiny@0.02``: the release's start). Presets use the first
model directory's tokenizer (their random BERT reads the ids alike).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lfvila_cli.data.corpus import read_corpus  # noqa: E402
from lfvila_cli.data.loader_config import LoaderConfig  # noqa: E402
from lfvila_cli.data.task_data import TaskDataset  # noqa: E402
from lfvila_cli.data.tokenizer import load_tokenizer  # noqa: E402
from lfvila_cli.model import fusion  # noqa: E402
from lfvila_cli.model.lfvila import LfvilaModel, build_model  # noqa: E402
from lfvila_cli.model.presets import PRESETS, get_preset  # noqa: E402


def temporal_ratio(video: torch.Tensor) -> tuple[float, float]:
    """video (B, T, ...) -> (mean over B of [sd across T, averaged over the rest] / sd of all
    of that video's values, the same numerator unscaled)."""
    x = video.flatten(2).float()  # (B, T, E)
    across = x.std(dim=1).mean(dim=1)  # (B,)
    overall = x.flatten(1).std(dim=1)  # (B,)
    return float((across / overall).mean()), float(across.mean())


def load(spec: str, seed: int):
    """(model, frame size or None) for a model directory or preset name, ``:HxW`` and ``@STD`` optional."""
    spec, _, std = spec.partition("@")
    name, _, size = spec.partition(":")
    hw = tuple(int(v) for v in size.split("x")) if size else None
    if name in PRESETS:
        torch.manual_seed(seed)
        default = fusion.TOKEN_EMBEDDING_STD
        fusion.TOKEN_EMBEDDING_STD = float(std) if std else default
        try:
            model = build_model(get_preset(name, "qa-multichoice", text_model="random")).eval()
        finally:
            fusion.TOKEN_EMBEDDING_STD = default
    else:
        model = LfvilaModel.from_pretrained(name).eval()
    if model.fusion is None:
        raise SystemExit(f"{name}: has no cross-modal encoder (a stage-1 or retrieval model)")
    return model, hw


@torch.no_grad()
def measure(model, batch: dict, size) -> list[tuple[str, float, float]]:
    frames = batch["frames"]  # (B, T, 3, H, W)
    if size is not None:
        b, t = frames.shape[:2]
        frames = F.interpolate(frames.flatten(0, 1), size=size, mode="bilinear", align_corners=False).unflatten(0, (b, t))
    ids = batch["input_ids"][:, 0]  # (B, M, L): each item's question and first candidate
    mask = batch["attention_mask"][:, 0]
    tokens = model.video_encoder(frames).tokens  # (B, T, h, w, C)
    embed = model.fusion.video_tokens
    frames_n = tokens.shape[1]
    pooled = embed.input_proj(embed.pool(tokens))  # (B, T, S, H)
    spaced = pooled + embed.spatial_embedding
    timed = spaced + embed.temporal_embedding[:, :frames_n]
    rows = [("final map", tokens), ("pooled", pooled), ("+ space", spaced), ("+ time", timed), ("input (LN)", embed.norm(timed))]

    seen: list[torch.Tensor] = []
    first, last = model.fusion.layer_range
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
        for layer in model.fusion.bert.encoder.layer[first:last]
    ]
    try:
        fused = model.fuse(tokens, ids, mask)
    finally:
        for hook in hooks:
            hook.remove()
    per_frame = fused.video_length // frames_n
    for i, out in enumerate(seen):
        video = out[:, fused.text_length:]
        rows.append((f"layer {first + i}", video.reshape(video.shape[0], frames_n, per_frame, -1)))
    rows.append(("frame states", fused.frame_states))
    return [(label, *temporal_ratio(x)) for label, x in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a How2QA-shaped samples.jsonl")
    parser.add_argument("--store", required=True, help="its chunks frame store (frames.zarr)")
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--items", type=int, default=8, help="test items (the first ones)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))

    dirs = [m.partition("@")[0].partition(":")[0] for m in args.model]
    dirs = [d for d in dirs if d not in PRESETS]
    if not dirs:
        raise SystemExit("give at least one model directory (its tokenizer tokenizes the items)")
    tokenizer = load_tokenizer(str(Path(dirs[0]) / "tokenizer"))
    samples = [s for s in read_corpus(Path(args.corpus)) if s.split == "test"][: args.items]
    dataset = TaskDataset(samples, args.store, tokenizer, "multiple_choice", LoaderConfig(max_tokens=32), train=False)
    batch = TaskDataset.collate_fn([dataset[i] for i in range(len(dataset))])

    results = {}
    for spec in args.model:
        model, size = load(spec, args.seed)
        results[spec] = measure(model, batch, size)
        del model
    labels = []  # every model's steps in order (their cross-modal layers differ), the frame states last
    for rows in results.values():
        labels += [label for label, _, _ in rows if label not in labels and label != "frame states"]
    labels.append("frame states")
    print(f"{len(samples)} test items, {batch['frames'].shape[1]} frames each; temporal ratio (sd across frames / sd), per model")
    print("| step | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for label in labels:
        cells = []
        for rows in results.values():
            hit = [f"{r:.3f} (sd {sd:.3f})" for lab, r, sd in rows if lab == label]
            cells.append(hit[0] if hit else "")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
