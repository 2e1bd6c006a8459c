"""Make a small folder of videos with subtitles to try the walk-through on (no download).

The videos are the bundled synthetic example's (one coloured shape; each 2-second clip shows one
event, narrated by one sentence), written the way your own data usually comes: ``<name>.mp4``
with its narration beside it as ``<name>.srt``. Also written, for the question-answering part of
the walk-through, in lfvila's corpus format with video paths relative to the folder:

* ``questions.jsonl``: multiple choice ("What happens after the red circle grows?", 4 candidates);
* ``statements.jsonl``: true/false statements ("the circle grows before it spins.", label 1 or 0).

    python examples/custom_dataset/make_demo_folder.py my_videos --videos 24
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lfvila_cli.data.corpus import Sample
from lfvila_cli.data.example import ExampleConfig, how2qa_items, plan_videos, render_video, violin_items
from lfvila_cli.data.video import write_video


def srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def qa_record(item: Sample, name: str, number: int, split: str) -> dict:
    """A QA item as a corpus record of this folder: named after its video, its split."""
    record = item.to_json()
    record.update(id=f"{name}-{number}", video=f"{name}.mp4", split=split)
    for name in ("events", "group", "hard_negative_of"):  # the example's bookkeeping, not the user's
        record.pop(name, None)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the videos, subtitles and QA files")
    parser.add_argument("--videos", type=int, default=24, help="how many videos (default 24)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.videos < 3:
        print("error: --videos must be at least 3", file=sys.stderr)
        return 1
    # Every video is rendered as a "train" video of the example: the splits are the folder
    # converter's to draw, as they would be for your own videos.
    cfg = ExampleConfig(seed=args.seed, train_videos=args.videos, val_videos=0, test_videos=0)
    args.folder.mkdir(parents=True, exist_ok=True)
    questions, statements = [], []
    for plan in plan_videos(cfg):
        name = f"video-{plan.index:03d}"
        write_video(args.folder / f"{name}.mp4", render_video(plan, cfg), cfg.fps)
        cues = [
            f"{i + 1}\n{srt_time(i * cfg.clip_seconds)} --> {srt_time((i + 1) * cfg.clip_seconds)}\n{text}\n"
            for i, text in enumerate(plan.sentences())
        ]
        (args.folder / f"{name}.srt").write_text("\n".join(cues), encoding="utf-8")
        # The QA items' splits: every fifth video's are val, the next video's test.
        split = ("val", "test", "train", "train", "train")[plan.index % 5]
        questions += [qa_record(item, name, k, split) for k, item in enumerate(how2qa_items(plan, cfg))]
        statements += [qa_record(item, name, k, split) for k, item in enumerate(violin_items(plan, cfg))]
    for file, records in (("questions.jsonl", questions), ("statements.jsonl", statements)):
        with open(args.folder / file, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    print(f"{args.folder}: {args.videos} videos with .srt subtitles, {len(questions)} questions, {len(statements)} statements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
