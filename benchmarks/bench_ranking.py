"""Benchmark of retrieval ranking at scale: ``retrieval_metrics`` (both directions, chunked) on
N paragraphs × N videos of random unit features at the base preset's embedding size (1024).

Reports the wall time and the peak resident memory the ranking added on top of the features,
against the size one full N × N float32 similarity matrix would take. Peak memory is read from
``/proc/self/status`` (VmHWM) after resetting the high-water mark, so it counts everything the
process touched during ranking (torch's allocator included).

    python benchmarks/bench_ranking.py                    # 20,000 × 20,000, chunk 1024
    python benchmarks/bench_ranking.py --n 5000 --chunk 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lfvila_cli.evaluation import retrieval_metrics  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=1024, help="embedding size (lfvila-base: 1024)")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(args.n, args.dim, generator=g), dim=1)
    text = torch.nn.functional.normalize(video + 1.5 * torch.randn(args.n, args.dim, generator=g), dim=1)
    features_mib = 2 * video.numel() * 4 / 2**20
    _reset_peak()
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    metrics = retrieval_metrics(video, text, chunk=args.chunk)
    seconds = time.perf_counter() - started
    peak_added_mib = (_status_kib("VmHWM") - before) / 1024
    full_mib = args.n * args.n * 4 / 2**20

    print(f"{args.n:,} paragraphs x {args.n:,} videos, {args.dim} dims, chunk {args.chunk}, {args.threads} threads")
    print(f"  both directions ranked in {seconds:.1f} s")
    print(f"  peak memory added while ranking: {peak_added_mib:.0f} MiB (features: {features_mib:.0f} MiB; "
          f"one full {args.n:,} x {args.n:,} float32 matrix: {full_mib:.0f} MiB)")
    for direction, values in metrics.items():
        print(f"  {direction}: " + ", ".join(f"{k} {v:.4f}" if k.startswith("R@") else f"{k} {v:.1f}" for k, v in values.items()))
    return {"seconds": seconds, "peak_added_mib": peak_added_mib, "full_matrix_mib": full_mib, "metrics": metrics}


if __name__ == "__main__":
    main()
