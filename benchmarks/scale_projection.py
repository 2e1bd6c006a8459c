"""Project the frame store's size and the cache's CPU time to the paper's corpora, from a
``bench_codecs.py --json`` run (measured bytes per clip and cache throughput per core).

    python benchmarks/bench_codecs.py --json codecs.json
    python benchmarks/bench_codecs.py --videos bigbuckbunny.mp4 --cache-codecs jpeg --json codecs-720p.json
    python benchmarks/scale_projection.py codecs.json --throughput codecs-720p.json

Bytes per clip are the measured stores' bytes (frames, times, status and index, as files'
sizes) over their rows; a filesystem with 4 KiB blocks adds up to 8 KiB per row for the two
tiny per-row files (``times``, ``status``), shown separately. CPU time is the clips' frames
over the measured ``cache_frames`` rate per core (the rate of ``--workers`` threads divided by
the workers: the benchmark runs one worker per core). ``--throughput`` takes the rate from
another run (e.g. the 1280×720 video alone: the paper's corpus is 720p). Every downstream video
is cached as the fine-tuning recipe takes it: 4 chunks × K frames (their core-hours assume the
clips' rate; 32 frames spread over a long video cost more seeking per frame).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Clip counts and where they come from. Pre-training: LF-VILA-8M has 8,523,237 samples of at
# least 4 consecutive clips (the paper); the clips it covers are at least 4 per sample and at
# most every clip of HD-VILA-100M (about 103 M clips, as that dataset is published).
PRETRAIN = [
    ("LF-VILA-8M, at least 4 clips per sample", 4 * 8_523_237),
    ("every clip of HD-VILA-100M (upper bound)", 103_000_000),
]
# Downstream datasets as published (videos or clips, rounded), each cached as 4 chunks.
DOWNSTREAM = [
    ("ActivityNet Captions", 20_000),
    ("DiDeMo", 10_500),
    ("QuerYD", 2_500),
    ("Condensed Movies", 34_000),
    ("How2QA", 22_000),
    ("VIOLIN", 15_900),
    ("ActivityNet-QA", 5_800),
]
CHUNKS = 4
BLOCK_OVERHEAD = 2 * 4096  # two per-row files (times, status) rounded up to a 4 KiB block each


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} PB"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("codecs_json", type=Path, help="bench_codecs.py --json output: bytes per clip")
    parser.add_argument("--throughput", type=Path, default=None, help="another bench_codecs.py --json: the cache rate")
    parser.add_argument("--codecs", nargs="+", default=["raw", "jpeg"])
    args = parser.parse_args(argv)

    sizes = json.loads(args.codecs_json.read_text())
    rates = json.loads(args.throughput.read_text()) if args.throughput else sizes
    k = int(sizes["args"]["frames"])
    rows = sizes["stored_frames"] / k
    workers = int(rates["args"]["workers"])
    per_clip = {c: sizes["store_sizes"][c]["store_bytes"] / rows for c in args.codecs}
    per_core = {}
    for c in args.codecs:
        name = f"cache_frames, codec={c}"
        if name in rates["throughput_fps"]:
            per_core[c] = rates["throughput_fps"][name] / workers
    print(f"measured: {k} frames per clip at {sizes['args']['height']}x{sizes['args']['width']}; bytes per clip "
          + ", ".join(f"{c} {per_clip[c]:,.0f}" for c in args.codecs)
          + f" (+ up to {BLOCK_OVERHEAD:,} on 4 KiB-block filesystems); cache frames/s per core "
          + ", ".join(f"{c} {v:.1f}" for c, v in per_core.items())
          + f" ({', '.join(s['name'] for s in rates['sources'])})")

    table = []
    for name, clips in PRETRAIN + [(f"{n} ({CHUNKS} chunks per video)", v * CHUNKS) for n, v in DOWNSTREAM]:
        row = {"corpus": name, "clips": clips}
        for c in args.codecs:
            row[f"{c}_bytes"] = clips * per_clip[c]
            if c in per_core:
                row[f"{c}_core_hours"] = clips * k / per_core[c] / 3600
        table.append(row)
    header = ["corpus", "clips (rows)"] + [f"{c} store" for c in args.codecs] + [f"{c} core-hours" for c in per_core]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in table:
        cells = [row["corpus"], f"{row['clips']:,}"] + [human_bytes(row[f"{c}_bytes"]) for c in args.codecs]
        cells += [f"{h:,.0f}" if (h := row[f"{c}_core_hours"]) >= 10 else f"{h:.1f}" for c in per_core]
        print("| " + " | ".join(cells) + " |")
    return {"per_clip_bytes": per_clip, "per_core_fps": per_core, "table": table}


if __name__ == "__main__":
    main()
