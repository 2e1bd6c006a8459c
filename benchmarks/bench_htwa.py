"""Benchmark of the HTWA (Hierarchical Temporal Window Attention) video encoder on the CPU.

Measures, with ``torch.set_num_threads(2)`` and batch 1, in fresh subprocesses (one per row):

(a) scaling in frames (8, 16, 32, 64) — HTWA against the *same* encoder (same weights) with
    full space-time attention (every layer's window = the whole map, no shift): forward+backward
    time, peak memory and attention FLOPs. Targets: attention FLOPs at 32 frames <= 1/20 of full
    attention; HTWA cost linear in frames (full attention: quadratic).
(b) the base preset at 32 × 96×160: HTWA vs full attention, forward+backward (target speed-up
    >= 5x; the authors report 1.9 s vs 18 s), and the base forward at 32 × 192×320.
(c) the SDPA path against the dense reference path (full-sequence softmax(QKᵀ + bias + mask)V
    with an explicit block mask; what tests compare against).

What the columns measure:
  time      median wall time of the timed iterations (after one untimed first iteration)
  peak MiB  peak resident set size of the process during the *first* iteration minus the RSS
            just before it (``ru_maxrss``; activations, autograd buffers, parameter gradients,
            allocator slack; weights and input excluded). RSS, not allocator bytes: torch's CPU
            allocator has no peak counter, and tracemalloc does not see torch.
  attn GF   forward attention FLOPs (QKᵀ and AV: every bmm/SDPA FLOP the counter sees; 2 FLOPs
            per multiply-add) from ``torch.utils.flop_counter.FlopCounterMode``
  total GF  all forward FLOPs the counter sees (matmuls, convolutions)
  formula   forward attention FLOPs from 4·L·N·C per block (L tokens incl. window padding, N
            tokens per window, C width); it must equal ``attn GF`` and gives the 192×320 full-
            attention figure, which does not fit in this machine's memory

    python benchmarks/bench_htwa.py                    # default, ~4 min on 2 cores
    python benchmarks/bench_htwa.py --quick            # smoke run, ~1 min
    python benchmarks/bench_htwa.py --frames 8 16 32 64 128 --scaling-size 96x160 --json out.json

A correct default run on 2 cores (2.5 min) prints, among its rows and summary:

    htwa (base)              32   96x160  fwd_bwd      2.36       962      3.37      82.5      3.37
    full (base)              32   96x160  fwd_bwd     19.52      5165     76.74     155.8     76.74
    htwa (base)              32  192x320  fwd          2.43       251     14.16     313.6     14.16
    attention FLOPs at 32 x 96x160: HTWA/full = 1/22.8
    attention FLOPs at 32 x 192x320 (formula): HTWA 14.2 GF vs full 1225 GF = 1/86.5
    htwa growth per step in frames: 8->16: time x1.28, attn x2.36, 16->32: time x1.70, attn x2.06, ...
    full growth per step in frames: 8->16: time x2.24, attn x4.00, 16->32: time x2.43, attn x4.00, ...
    fwd+bwd at 32 x 96x160: HTWA 2.36 s, full 19.52 s, speed-up x8.28 (target >= 5); peak 962 vs 5165 MiB

FLOP counts are exact; times vary by ±10 % between runs. At 48×80 the windows cover a large
share of the small map, so the FLOP ratio there is only 1/10; from 16 frames on, HTWA attention
grows ~2x per doubling of frames (slightly more: the global top layer is quadratic in frames).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AUTHORS = "authors' encoder (paper): 1.9 s HTWA vs 18 s full attention, fwd+bwd at 32 x 96x160"


# --------------------------------------------------------------------------------------------
# One measurement (runs in its own process so peak RSS belongs to it alone)
# --------------------------------------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def use_full_attention(model) -> None:
    """Same weights, every window = the whole map: each layer becomes 'global' in time and its
    spatial window unbounded (so the shift is 0). Offsets beyond a bias table read its edge."""
    for layer in model.layers:
        layer.is_global = True
        layer.table_window = (layer.table_window[0], 1 << 20, 1 << 20)


def measure(spec: dict) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

    from lfvila_cli.model.video_encoder import VideoEncoder, VideoEncoderConfig

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    cfg = VideoEncoderConfig(attention=spec["impl"], drop_path_rate=0.0, **spec.get("config", {}))
    model = VideoEncoder(cfg)
    if spec["variant"] == "full":
        use_full_attention(model)
    h, w = spec["size"]
    x = torch.randn(1, spec["frames"], 3, h, w)
    backward = spec["mode"] == "fwd_bwd"
    model.train(backward)

    def step() -> None:
        if backward:
            out = model(x)
            (out.tokens.float().mean() + out.clip_features.float().mean()).backward()
            model.zero_grad(set_to_none=False)
        else:
            with torch.no_grad():
                model(x)

    rss_before = _rss_kib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    result = {
        **spec,
        "time_s": statistics.median(times) if times else first,
        "first_s": first,
        "peak_mib": (max(peak_after, peak_before) - rss_before) / 1024,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if spec.get("flops"):
        # Grad mode so the learned bias sends SDPA down its math path (bmm), which the counter
        # sees; the CPU flash kernel (no-grad) is mapped too in case it is chosen.
        mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_flop}
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            model(x)
        counts = counter.get_flop_counts()["Global"]
        attention = sum(v for op, v in counts.items() if "bmm" in str(op) or "scaled_dot_product" in str(op))
        result["attn_gflop"] = attention / 1e9
        result["total_gflop"] = counter.get_total_flops() / 1e9
    return result


def attention_gflop(config: dict, frames: int, size: list[int], full: bool) -> float:
    """Forward attention FLOPs by formula: QKᵀ and AV are 2·N·C multiply-adds per query."""
    import math

    from lfvila_cli.model.video_encoder import VideoEncoderConfig

    cfg = VideoEncoderConfig(**config)
    h, w = size[0] // cfg.patch_size[1], size[1] // cfg.patch_size[2]
    total = 0
    for i, (dim, depth) in enumerate(zip(cfg.layer_dims, cfg.depths)):
        if full:
            window = (frames, h, w)
        else:
            window = (cfg.temporal_window(i, frames), min(cfg.spatial_window[0], h), min(cfg.spatial_window[1], w))
        padded = [math.ceil(n / k) * k for n, k in zip((frames, h, w), window)]
        total += depth * 4 * math.prod(padded) * math.prod(window) * dim
        if i in cfg.merge_after:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
    return total / 1e9


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def run(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])},
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker failed for {spec}:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["formula_gflop"] = attention_gflop(spec.get("config", {}), spec["frames"], spec["size"], spec["variant"] == "full")
    return result


def row(r: dict) -> str:
    flops = f"{r['attn_gflop']:9.2f} {r['total_gflop']:9.1f}" if "attn_gflop" in r else f"{'-':>9} {'-':>9}"
    h, w = r["size"]
    return (
        f"{r['label']:<22} {r['frames']:>4} {h:>4}x{w:<4} {r['mode']:<8} {r['time_s']:8.2f} "
        f"{r['peak_mib']:9.0f} {flops} {r['formula_gflop']:9.2f}"
    )


HEADER = (
    f"{'encoder':<22} {'T':>4} {'size':^9} {'mode':<8} {'time s':>8} {'peak MiB':>9} {'attn GF':>9} "
    f"{'total GF':>9} {'formula':>9}"
)


def parse_size(text: str) -> list[int]:
    h, w = text.lower().split("x")
    return [int(h), int(w)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--scaling-size", type=parse_size, default=[48, 80], help="H x W for the frame sweep")
    ap.add_argument("--repeats", type=int, default=3, help="timed iterations after the first (small runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8/16/32 frames, fewer big rows")
    ap.add_argument("--json", type=Path, help="also write all rows here")
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return

    base = dict(threads=args.threads, impl="sdpa", flops=True)
    frames = [t for t in args.frames if t <= 32] if args.quick else args.frames
    results: list[dict] = []

    def go(label: str, **spec) -> dict:
        r = run({**base, **spec, "label": label})
        results.append(r)
        print(row(r), flush=True)
        return r

    print(f"torch threads = {args.threads}, batch 1, base preset widths/depths (89.2 M parameters)")
    print(HEADER)
    print("-- (a) frame sweep, base preset at", "x".join(map(str, args.scaling_size)))
    sweep: dict[str, dict[int, dict]] = {"htwa": {}, "full": {}}
    for t in frames:
        for variant in ("htwa", "full"):
            sweep[variant][t] = go(
                f"{variant} (base)", variant=variant, frames=t, size=args.scaling_size,
                mode="fwd_bwd", repeats=args.repeats,
            )

    print("-- (b) base preset at paper-like sizes (full attention: its first iteration is the timed one)")
    htwa32 = go("htwa (base)", variant="htwa", frames=32, size=[96, 160], mode="fwd_bwd", repeats=2)
    full32 = go("full (base)", variant="full", frames=32, size=[96, 160], mode="fwd_bwd", repeats=0)
    go("htwa (base)", variant="htwa", frames=32, size=[192, 320], mode="fwd", repeats=1)

    print("-- (c) SDPA path vs dense reference path (base preset)")
    ref_t = 8 if args.quick else 16
    sdpa = go("htwa sdpa", variant="htwa", frames=ref_t, size=args.scaling_size, mode="fwd_bwd", repeats=args.repeats, flops=False)
    dense = go("htwa dense reference", variant="htwa", frames=ref_t, size=args.scaling_size, mode="fwd_bwd",
               repeats=args.repeats, impl="dense", flops=False)

    print()
    print("Summary")
    if 32 in sweep["htwa"]:
        a, f = sweep["htwa"][32], sweep["full"][32]
        print(f"  attention FLOPs at 32 frames, {args.scaling_size[0]}x{args.scaling_size[1]}: "
              f"HTWA/full = 1/{f['attn_gflop'] / a['attn_gflop']:.1f} (target <= 1/20)")
    print(f"  attention FLOPs at 32 x 96x160: HTWA/full = 1/{full32['attn_gflop'] / htwa32['attn_gflop']:.1f}")
    big_htwa, big_full = (attention_gflop({}, 32, [192, 320], full) for full in (False, True))
    print(f"  attention FLOPs at 32 x 192x320 (formula): HTWA {big_htwa:.1f} GF vs full {big_full:.0f} GF "
          f"= 1/{big_full / big_htwa:.1f}")
    mismatch = [r for r in results if "attn_gflop" in r and abs(r["attn_gflop"] - r["formula_gflop"]) > 1e-6 * r["formula_gflop"]]
    print(f"  formula == FLOP counter on every counted row: {not mismatch}")
    for variant in ("htwa", "full"):
        s = sweep[variant]
        steps = ", ".join(
            f"{a}->{b}: time x{s[b]['time_s'] / s[a]['time_s']:.2f}, attn x{s[b]['attn_gflop'] / s[a]['attn_gflop']:.2f}"
            for a, b in zip(frames, frames[1:])
        )
        print(f"  {variant} growth per step in frames: {steps}")
    print(f"  fwd+bwd at 32 x 96x160: HTWA {htwa32['time_s']:.2f} s, full {full32['time_s']:.2f} s, "
          f"speed-up x{full32['time_s'] / htwa32['time_s']:.2f} (target >= 5); peak "
          f"{htwa32['peak_mib']:.0f} vs {full32['peak_mib']:.0f} MiB")
    print(f"  {AUTHORS}")
    print(f"  SDPA path vs dense reference, fwd+bwd at {ref_t} frames: {sdpa['time_s']:.2f} s vs "
          f"{dense['time_s']:.2f} s (x{dense['time_s'] / sdpa['time_s']:.1f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
