"""ONNX Runtime against PyTorch eager for the exported encoders, on CPU, in one run.

    python benchmarks/bench_onnx.py --export lfvila-work/store/export/<key> --model lfvila-work/store/pretrain1/<key>

Times the video encoder (frames fixed as exported) and the text encoder (4 sentences × the
model's max tokens) at batch 1 (latency, median of ``--repeats``) and batch 16 (throughput),
both paths with the same number of threads (``--threads``, default 2), after one warm-up call
each. Prints a table and the ratios; ``--json`` writes them.

``--cache lfvila-work/store/cache/<key>`` (a ``chunks`` frame store) also times indexing: the
index stage's ``build_index`` over the whole store into a temporary directory, once through
ONNX Runtime and once through PyTorch, alternating, three passes each, and prints the median
videos/s for each (reading the frames from Zarr included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="an export artifact directory")
    parser.add_argument("--model", required=True, help="the model artifact it was exported from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cache", default="", help="a chunks frame store artifact: also time indexing it")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    import onnxruntime as ort

    from lfvila_cli.export import TEXT_FILE, VIDEO_FILE, read_metadata
    from lfvila_cli.model.pretrained import load_pretrained

    torch.set_num_threads(args.threads)
    export_dir = Path(args.export)
    meta = read_metadata(export_dir / VIDEO_FILE)
    fixed, pre = meta["fixed"], meta["preprocessing"]
    model = load_pretrained(args.model).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    video = ort.InferenceSession(str(export_dir / VIDEO_FILE), options, providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(export_dir / TEXT_FILE), options, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch, repeats in ((1, args.repeats), (16, max(3, args.repeats // 3))):
        frames = torch.randn(batch, fixed["frames"], 3, fixed["height"], fixed["width"], generator=gen)
        ids = torch.randint(5, 40, (batch, 4, pre["max_tokens"]), generator=gen)
        mask = torch.ones_like(ids)
        feeds = {"frames": frames.numpy()}
        tfeeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        with torch.inference_mode():
            v_torch = median_time(lambda: model.encode_video(frames), repeats)
            t_torch = median_time(lambda: model.encode_text(ids, mask), repeats)
        v_onnx = median_time(lambda: video.run(None, feeds), repeats)
        t_onnx = median_time(lambda: text.run(None, tfeeds), repeats)
        rows.append({"encoder": "video", "batch": batch, "torch_s": v_torch, "onnx_s": v_onnx})
        rows.append({"encoder": "text", "batch": batch, "torch_s": t_torch, "onnx_s": t_onnx})
    print(f"{fixed['frames']} frames at {fixed['height']}×{fixed['width']}, {args.threads} threads")
    print("| encoder | batch | PyTorch eager | ONNX Runtime | ORT speed-up | ORT items/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = r["torch_s"] / r["onnx_s"]
        r["onnx_items_per_s"] = r["batch"] / r["onnx_s"]
        print(f"| {r['encoder']} | {r['batch']} | {1000 * r['torch_s']:.1f} ms | {1000 * r['onnx_s']:.1f} ms | {r['speedup']:.2f}× | {r['onnx_items_per_s']:.1f} |")
    if args.cache:
        rows += index_throughput(args.cache, export_dir, Path(args.model))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def index_throughput(cache_dir: str, export_dir: Path, model_dir: Path, repeats: int = 3) -> list[dict]:
    """Videos/s of ``build_index`` through ONNX Runtime and PyTorch over a whole chunks store:
    the engines alternate, ``repeats`` passes each, and the median pass is reported (one pass
    over a small store varies by ±20% on a shared 2-core machine)."""
    import tempfile

    from lfvila_cli.search import IndexConfig, build_index

    store = str(Path(cache_dir) / "frames.zarr")
    rates: dict[str, list[float]] = {"onnx": [], "torch": []}
    videos = 0
    for _ in range(repeats):
        for engine, source in (("onnx", export_dir), ("torch", model_dir)):
            with tempfile.TemporaryDirectory() as tmp:
                info = build_index(store, source, IndexConfig(engine=engine, batch=16), Path(tmp))
            rates[engine].append(info["videos_per_s"])
            videos = info["videos"]
    median = {engine: statistics.median(r) for engine, r in rates.items()}
    print(f"indexing {videos} videos (batch 16, median of {repeats} passes): ONNX Runtime {median['onnx']:.1f} videos/s, "
          f"PyTorch {median['torch']:.1f} videos/s, ratio {median['onnx'] / median['torch']:.2f}× "
          f"(passes: onnx {rates['onnx']}, torch {rates['torch']})")
    return [{"indexing": engine, "videos": videos, "videos_per_s": median[engine], "passes": rates[engine]} for engine in rates]

if __name__ == "__main__":
    main()
