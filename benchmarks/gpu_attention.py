"""The video encoder's attention paths side by side on a GPU: ``lfvila-base`` stage-1 training
steps with ``video.attention: sdpa`` (windows partitioned, ``scaled_dot_product_attention``) and
``video.attention: flex`` (FlexAttention over the whole map with a block mask; compiled on CUDA),
at one micro-batch (default 16), 32 frames of 192×320, bf16: samples/s and peak memory per path.

The steps are ``benchmarks/gpu_pretrain.py``'s (random frames and sentences made on the device,
``stage1_loss`` forward and backward, clipping, AdamW; ``--precision`` as there). Both paths
start from the same weights and take the same batches, so their first losses must agree (printed;
bf16 rounding apart). The first ``--warmup`` steps of the flex path include compiling its
kernels (forward and backward, once per layer shape) and are not timed. A path that runs out of
memory is reported as such. Before the timings it prints, per layer, how many of the block mask's
128×128 tiles the flex path computes and how much of that work is inside windows (the rest is
masked out within computed tiles): what the block sparsity buys at this size.

    python benchmarks/gpu_attention.py                          # one CUDA GPU; table and JSON
    python benchmarks/gpu_attention.py --micro-batch 8 --json attention.json
    python benchmarks/gpu_attention.py --device cpu --preset lfvila-tiny --frames 16 --height 64 --width 96 --micro-batch 2

Without a CUDA device (and without ``--device cpu``) it prints "no CUDA device: nothing measured"
and exits 0. ``--device cpu`` is a smoke test of the code end to end at a tiny size, not a
timing: torch runs FlexAttention eagerly there and refuses its backward on CPU by a device check
alone, which this script lifts on CPU as tests/test_flex_attention.py does.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from gpu_pretrain import Stage1Step, add_stage1_arguments, print_and_save, stage1_config, try_size  # noqa: E402
from lfvila_cli.errors import LfvilaError  # noqa: E402
from lfvila_cli.model.lfvila import build_model  # noqa: E402
from lfvila_cli.model.video_encoder import FLEX_BLOCK, flex_windows  # noqa: E402

PATHS = ("sdpa", "flex")


def block_mask_figures(model, frames: int, height: int, width: int) -> list[dict]:
    """Per layer of the video encoder: tiles the flex path computes, of all, and the share of the
    computed scores that lie inside a window (plain and shifted blocks alike when they agree)."""
    encoder = model.video_encoder
    _, ph, pw = encoder.config.patch_size
    size = (frames, height // ph, width // pw)
    rows = []
    for i, layer in enumerate(encoder.layers):
        window, shift = layer.window_and_shift(size)
        L = math.prod(size)
        for block_shift in ([(0, 0, 0), shift] if any(shift) and len(layer.blocks) > 1 else [(0, 0, 0)]):
            windows = flex_windows(size, window, block_shift, torch.device("cpu"))
            tiles = int(windows.block_mask.to_dense().sum())
            ids = windows.window_id[:L]
            in_windows = int(torch.unique(ids, return_counts=True)[1].square().sum())  # Σ window size²
            rows.append({"layer": i, "map": list(size), "window": list(window), "shift": list(block_shift),
                         "tokens": L, "tiles_computed": tiles, "tiles_total": math.ceil(L / FLEX_BLOCK) ** 2,
                         "useful_share": in_windows / (tiles * FLEX_BLOCK**2)})
        if layer.downsample is not None:
            size = (size[0], math.ceil(size[1] / 2), math.ceil(size[2] / 2))
    return rows


def lift_cpu_backward_check() -> None:
    """torch refuses FlexAttention's backward on CPU before running it; its eager backward works."""
    import torch.nn.attention.flex_attention as flex_module

    flex_module._validate_device = lambda query, key, value: None


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stage1_arguments(ap)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="attention paths, in this order")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per path (flex compiles in these)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per path")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing measured")
        return None
    if device.type == "cpu":
        lift_cpu_backward_check()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"

    config, shapes = stage1_config(ap, args)
    print(f"{args.preset} stage 1 on {name}, torch {torch.__version__}: micro-batch {args.micro_batch}, "
          f"frames {args.frames} x {args.height}x{args.width}, precision {args.precision}")

    results: dict[str, dict] = {}
    figures = None
    for path in args.paths:
        try:
            config.video = dataclasses.replace(config.video, attention=path)  # checks that the path can run
        except LfvilaError as exc:
            ap.error(str(exc))
        torch.manual_seed(0)  # the same weights for every path
        model = build_model(config)
        model.set_trainable("stage1")
        if figures is None:
            figures = block_mask_figures(model, args.frames, args.height, args.width)
            print(f"flex block mask ({FLEX_BLOCK}×{FLEX_BLOCK} tiles): layer, map, window, shift: tiles computed / all, "
                  "share of their scores inside windows")
            for r in figures:
                print(f"  {r['layer']} {r['map']} {r['window']} {r['shift']}: {r['tiles_computed']} / {r['tiles_total']}, "
                      f"{r['useful_share']:.1%}")
        model.to(device).train()
        step_fn = Stage1Step(model, config.objectives, args.precision, args.lr, weight_decay=0.05, grad_clip=1.0)
        started = time.perf_counter()
        results[path] = try_size(step_fn, args.micro_batch, args, shapes, device)
        results[path]["seconds_with_warmup"] = time.perf_counter() - started
        del step_fn, model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"{'path':>5} {'fits':>5} {'samples/s':>10} {'step ms':>9} {'peak alloc GiB':>15} {'peak reserved GiB':>18} {'first loss':>11}")
    for path, r in results.items():
        if not r["fits"]:
            print(f"{path:>5} {'OOM':>5}")
            continue
        mem = (f"{r['peak_allocated_gib']:15.2f} {r['peak_reserved_gib']:18.2f}" if "peak_allocated_gib" in r
               else f"{'-':>15} {'-':>18}")
        print(f"{path:>5} {'yes':>5} {r['samples_per_s']:10.2f} {r['step_ms']:9.0f} {mem} {r['first_loss']:11.5f}")
    summary = {"device": name, "torch": torch.__version__, "preset": args.preset, "frames": args.frames,
               "height": args.height, "width": args.width, "micro_batch": args.micro_batch, "precision": args.precision,
               "warmup_steps": args.warmup, "timed_steps": args.steps, "block_mask": figures, "paths": results}
    print_and_save(summary, args.json)
    return summary


if __name__ == "__main__":
    main()
