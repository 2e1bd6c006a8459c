"""Turn a folder of videos with subtitle files into an lfvila corpus file (JSON Lines).

Each video (``.mp4``, ``.mkv``, ``.webm``, ``.mov``, ``.avi``) whose subtitles sit beside it under
the same name (``talk.mp4`` + ``talk.srt`` or ``talk.vtt``) becomes one long-form sample: every
subtitle cue a segment (its start, end and text), in time order. Cues shorter than
``--min-seconds`` are merged into the next one, so a segment is long enough to show something.
Videos without subtitles are listed and left out.

Splits follow an order of the videos by a hash of their names, so adding videos moves only the
few near the split boundaries: ``--val`` and ``--test`` are fractions of the videos (at least
one video each when the fraction is above 0 and there are three videos or more).

    python examples/custom_dataset/folder_to_jsonl.py my_videos --out my_corpus.jsonl --val 0.2 --test 0.2

The output is what ``lfvila prepare --source jsonl`` reads; video paths are written relative to
the folder, so pass ``--set jsonl.video_root=my_videos`` (or keep the file inside the folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
# 00:01:02,500 (SRT) or 00:01:02.500 / 01:02.500 (WebVTT)
_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})"
_CUE_TIMES = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")


def _seconds(hours, minutes, seconds, fraction) -> float:
    return int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction.ljust(3, "0")) / 1000


def read_cues(path: Path) -> list[dict]:
    """``[{start, end, text}]`` of an SRT or WebVTT file, in file order; markup tags dropped."""
    cues, current = [], None
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        match = _CUE_TIMES.match(line)
        if match:
            g = match.groups()
            current = {"start": _seconds(*g[:4]), "end": _seconds(*g[4:]), "lines": []}
            cues.append(current)
        elif not line.strip():
            current = None  # a blank line ends the cue's text
        elif current is not None:
            current["lines"].append(re.sub(r"<[^>]+>", "", line).strip())
    return [
        {"start": round(c["start"], 3), "end": round(c["end"], 3), "text": " ".join(t for t in c["lines"] if t)}
        for c in cues
        if any(c["lines"]) and c["end"] > c["start"]
    ]


def merge_short(cues: list[dict], min_seconds: float) -> list[dict]:
    """Merge each cue shorter than ``min_seconds`` into the next (the last into the previous)."""
    out: list[dict] = []
    pending = None
    for cue in cues:
        if pending is not None:
            cue = {"start": pending["start"], "end": cue["end"], "text": f"{pending['text']} {cue['text']}"}
            pending = None
        if cue["end"] - cue["start"] < min_seconds:
            pending = cue
        else:
            out.append(cue)
    if pending is not None:
        if out:
            out[-1] = {"start": out[-1]["start"], "end": pending["end"], "text": f"{out[-1]['text']} {pending['text']}"}
        else:
            out.append(pending)
    return out


def assign_splits(ids: list[str], val: float, test: float) -> dict[str, str]:
    """``{id: split}``: ids ordered by a hash of the id, the first ``val`` fraction to val, the next
    ``test`` fraction to test, the rest to train."""
    ordered = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())

    def count(fraction: float) -> int:
        n = round(fraction * len(ids))
        return max(n, 1) if fraction > 0 and len(ids) >= 3 else n

    n_val, n_test = count(val), count(test)
    splits = {i: "val" for i in ordered[:n_val]}
    splits.update({i: "test" for i in ordered[n_val : n_val + n_test]})
    return {i: splits.get(i, "train") for i in ids}


def folder_records(folder: Path, val: float, test: float, min_seconds: float) -> tuple[list[dict], list[str]]:
    """(corpus records, videos left out with the reason)."""
    records, left_out = [], []
    for video in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
        subtitles = next((video.with_suffix(s) for s in (".srt", ".vtt") if video.with_suffix(s).is_file()), None)
        if subtitles is None:
            left_out.append(f"{video}: no .srt or .vtt beside it")
            continue
        cues = merge_short(read_cues(subtitles), min_seconds)
        if not cues:
            left_out.append(f"{subtitles}: no cues")
            continue
        relative = video.relative_to(folder).as_posix()
        records.append({"id": relative.rsplit(".", 1)[0], "video": relative, "segments": cues})
    splits = assign_splits([r["id"] for r in records], val, test)
    for record in records:
        record["split"] = splits[record["id"]]
    return records, left_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the folder of videos and their .srt/.vtt files (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="the corpus file to write (JSON Lines)")
    parser.add_argument("--val", type=float, default=0.1, help="fraction of videos for the val split (default 0.1)")
    parser.add_argument("--test", type=float, default=0.1, help="fraction of videos for the test split (default 0.1)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="merge cues shorter than this into the next (default 1.0)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder}: not a directory", file=sys.stderr)
        return 1
    if not (0 <= args.val and 0 <= args.test and args.val + args.test < 1):
        print("error: --val and --test must be >= 0 and leave some videos for train", file=sys.stderr)
        return 1
    records, left_out = folder_records(args.folder, args.val, args.test, args.min_seconds)
    for reason in left_out:
        print(f"left out: {reason}", file=sys.stderr)
    if not records:
        print(f"error: {args.folder}: no video with subtitles", file=sys.stderr)
        return 1
    with open(args.out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    counts = {s: sum(r["split"] == s for r in records) for s in ("train", "val", "test")}
    segments = sum(len(r["segments"]) for r in records)
    print(f"{args.out}: {len(records)} videos (train {counts['train']}, val {counts['val']}, test {counts['test']}), {segments} segments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
