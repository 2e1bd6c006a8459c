"""Rank videos for paragraphs with the exported ONNX encoders only: onnxruntime, numpy and the
`tokenizers` library — no lfvila, no torch — the way a serving stack would use them.

    python rank.py EXPORT_DIR --videos a.npy b.npy --paragraph "the red circle grows." "it moves left."

EXPORT_DIR is an `lfvila export --onnx` artifact (video_encoder.onnx, text_encoder.onnx,
tokenizer/). Each video is a .npy array of decoded RGB frames, uint8 (T, H, W, 3), already at
the exported frame count and size (see the printed preprocessing; `lfvila cache` stores frames
in exactly that form). Each --paragraph is one paragraph; pass its sentences as separate
arguments after one --paragraph.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def metadata(session: ort.InferenceSession) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    return {k[len("lfvila."):]: json.loads(v) if v[:1] in "[{" else v for k, v in props.items() if k.startswith("lfvila.")}


def session(path: Path) -> ort.InferenceSession:
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    s = ort.InferenceSession(str(path), providers=providers)
    print(f"{path.name}: running on {s.get_providers()[0]}")  # the provider actually used
    return s


def frames_input(videos: list[np.ndarray], pre: dict) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB -> float32 (B, T, 3, H, W), normalised as in training."""
    x = np.stack(videos).astype(np.float32) / 255.0
    x = (x - np.asarray(pre["image_mean"], np.float32)) / np.asarray(pre["image_std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3))


def text_input(paragraphs: list[list[str]], tokenizer: Tokenizer, pre: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each sentence alone as [CLS] sentence [SEP], padded to max_tokens; empty slots all zero."""
    slots, length = max(len(p) for p in paragraphs), pre["max_tokens"]
    ids = np.zeros((len(paragraphs), slots, length), np.int64)
    mask = np.zeros_like(ids)
    for i, paragraph in enumerate(paragraphs):
        for j, sentence in enumerate(paragraph):
            tokens = tokenizer.encode(sentence).ids[:length]
            ids[i, j, : len(tokens)], mask[i, j, : len(tokens)] = tokens, 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--videos", nargs="+", type=Path, required=True)
    parser.add_argument("--paragraph", nargs="+", action="append", required=True)
    args = parser.parse_args()

    video_session = session(args.export_dir / "video_encoder.onnx")
    text_session = session(args.export_dir / "text_encoder.onnx")
    meta = metadata(video_session)
    pre, fixed = meta["preprocessing"], meta["fixed"]
    print("preprocessing:", {k: pre[k] for k in ("frames", "height", "width", "frames_per_clip", "max_tokens")})
    tokenizer = Tokenizer.from_file(str(args.export_dir / pre["tokenizer"] / "tokenizer.json"))

    videos = [np.load(path) for path in args.videos]
    for path, video in zip(args.videos, videos):
        if video.shape != (fixed["frames"], fixed["height"], fixed["width"], 3):
            raise SystemExit(f"{path}: frames {video.shape}, the export takes {(fixed['frames'], fixed['height'], fixed['width'], 3)}")
    video_emb, clip_emb = video_session.run(None, {"frames": frames_input(videos, pre)})
    for paragraph in args.paragraph:
        if len(paragraph) > pre["max_sentences"]:
            raise SystemExit(f"a paragraph of {len(paragraph)} sentences; the model takes at most {pre['max_sentences']}")
    ids, mask = text_input(args.paragraph, tokenizer, pre)
    paragraph_emb, sentence_emb = text_session.run(None, {"input_ids": ids, "attention_mask": mask})

    scores = paragraph_emb @ video_emb.T  # embeddings are L2-normalised: cosine similarity
    result = []
    for i, paragraph in enumerate(args.paragraph):
        order = np.argsort(-scores[i], kind="stable")
        best = int(order[0])
        # per sentence, its best clip of the top video (what MTC aligns)
        clips = (sentence_emb[i, : len(paragraph)] @ clip_emb[best].T).argmax(axis=1)
        result.append({
            "paragraph": paragraph,
            "ranking": [{"video": str(args.videos[j]), "score": float(scores[i, j])} for j in order],
            "sentence_clips": [{"sentence": s, "clip": int(c)} for s, c in zip(paragraph, clips)],
        })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
