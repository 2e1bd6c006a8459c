"""Rank videos for paragraphs from Python with the lfvila library: decode video files, encode
them and the paragraphs with a trained model (PyTorch) or its ONNX export, rank by cosine
similarity, and place each sentence in the best-matching clip of the top video.

    python examples/python_api/rank_videos.py --workdir lfvila-work --engine torch \
        --videos a.mp4 b.mp4 c.mp4 \
        --paragraph "the red circle grows." "the red circle moves to the left."

--engine torch reads the latest stage-1 model of the work directory (--model REF for another),
--engine onnx the latest export (lfvila export --onnx). Each video is decoded as the downstream
cache stores it: --clips equal chunks of the model's frames per clip, evenly spaced, resized and
centre-cropped to --height × --width (the quickstart's 4 × 8 frames at 64×96 by default; an
ONNX export fixes these, and they are read from its metadata). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lfvila_cli.pipeline.artifacts import Workdir
from lfvila_cli.data.video import decode_chunks
from lfvila_cli.search import Encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("lfvila-work"))
    parser.add_argument("--engine", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--model", default="latest", help="the pretrain1 (torch) or export (onnx) artifact: ref, key or directory")
    parser.add_argument("--videos", nargs="+", type=Path, required=True)
    parser.add_argument("--paragraph", nargs="+", action="append", required=True, help="one paragraph: its sentences, in order")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="engine torch: bf16 where the hardware has it (auto), or not")
    args = parser.parse_args()

    # 1. The model: a stage-1 artifact through PyTorch, or an export through ONNX Runtime.
    artifact = Workdir(args.workdir).resolve("pretrain1" if args.engine == "torch" else "export", args.model)
    encoder = Encoder(args.engine, artifact.path, precision=args.precision)
    clips, height, width = args.clips, args.height, args.width
    if encoder.fixed is not None:  # an ONNX graph takes the frame count and size it was exported for
        clips, height, width = encoder.fixed["frames"] // encoder.frames_per_clip, encoder.fixed["height"], encoder.fixed["width"]

    # 2. Videos: uint8 frames (clips × frames per clip, H, W, 3) -> video (D,) and clip (clips, D) embeddings.
    decoded = [decode_chunks(str(path), clips, encoder.frames_per_clip, height, width) for path in args.videos]
    frames = np.stack([f.reshape(-1, height, width, 3) for f, _ in decoded])
    video, clip = encoder.videos(frames)

    # 3. Paragraphs -> paragraph (D,) and sentence (M, D) embeddings; rank the videos.
    results = []
    for sentences in args.paragraph:
        paragraph, sentence = encoder.paragraph(sentences)
        scores = video @ paragraph  # unit vectors: cosine similarity
        order = np.argsort(-scores, kind="stable")
        result = {"paragraph": sentences, "ranking": [{"video": str(args.videos[i]), "score": round(float(scores[i]), 4)} for i in order]}
        if clip is not None and sentence is not None:  # per sentence, the best clip of the top video and its time span
            top, times = order[0], decoded[order[0]][1]
            best = (sentence[: len(sentences)] @ clip[top].T).argmax(axis=1)
            result["sentence_clips"] = [
                {"sentence": s, "clip": int(c), "start": round(float(times[c, 0]), 2), "end": round(float(times[c, -1]), 2)}
                for s, c in zip(sentences, best)
            ]
        results.append(result)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
