"""ONNX Runtime (fp32, and int8 when given) against PyTorch eager for the exported encoders, on
CPU, in one run.

    python benchmarks/bench_onnx.py --export lfvila-work/store/export/<fp32 key> \
        --int8 lfvila-work/store/export/<int8 key> --model lfvila-work/store/pretrain1/<key>

Times the video encoder (frames fixed as exported) and the text encoder (4 sentences × the
model's max tokens) at batch 1 (latency, median of ``--repeats``) and batch 16 (throughput),
every path with the same number of threads (``--threads``, default 2), after one warm-up call
each. The paths take turns call by call (PyTorch, fp32, int8, PyTorch, …), so a load that comes
and goes on shared cores falls on all of them alike. ``--int8`` (an ``lfvila export --int8``
artifact of the same model) adds its column. Prints a table and the ratios; ``--json`` writes
them.

``--cache lfvila-work/store/cache/<key>`` (a ``chunks`` frame store) also times indexing: the
index stage's ``build_index`` over the whole store into a temporary directory, through PyTorch,
ONNX Runtime fp32 and (with ``--int8``) int8, alternating, three passes each, and prints the
median videos/s for each (reading the frames from Zarr included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def median_times(paths: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of ``repeats`` calls of each path, the paths taking turns call by call,
    after ``warmup`` untimed calls of each."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="an fp32 export artifact directory")
    parser.add_argument("--int8", default="", help="an int8 export artifact of the same model (lfvila export --int8): also time it")
    parser.add_argument("--model", required=True, help="the model artifact they were exported from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cache", default="", help="a chunks frame store artifact: also time indexing it")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    import onnxruntime as ort

    from lfvila_cli.export import TEXT_FILE, VIDEO_FILE, read_metadata
    from lfvila_cli.model.pretrained import load_pretrained

    torch.set_num_threads(args.threads)
    exports = {"onnx": Path(args.export)} | ({"int8": Path(args.int8)} if args.int8 else {})
    meta = read_metadata(exports["onnx"] / VIDEO_FILE)
    fixed, pre = meta["fixed"], meta["preprocessing"]
    for name, folder in exports.items():
        got = read_metadata(folder / VIDEO_FILE)
        want = "int8" if name == "int8" else "fp32"
        if got.get("precision", "fp32") != want or got["fixed"] != fixed:
            raise SystemExit(f"{folder}: a {got.get('precision', 'fp32')} export at {got['fixed']}; expected {want} at {fixed}")
    model = load_pretrained(args.model).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {name: {graph: ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
                       for graph, file in (("video", VIDEO_FILE), ("text", TEXT_FILE))} for name, folder in exports.items()}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch, repeats in ((1, args.repeats), (16, max(3, args.repeats // 3))):
        frames = torch.randn(batch, fixed["frames"], 3, fixed["height"], fixed["width"], generator=gen)
        ids = torch.randint(5, 40, (batch, 4, pre["max_tokens"]), generator=gen)
        mask = torch.ones_like(ids)
        feeds = {"video": {"frames": frames.numpy()}, "text": {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}}
        with torch.inference_mode():
            for encoder, run_torch in (("video", lambda: model.encode_video(frames)), ("text", lambda: model.encode_text(ids, mask))):
                paths = {"torch": run_torch}
                paths |= {name: (lambda s=s[encoder], f=feeds[encoder]: s.run(None, f)) for name, s in sessions.items()}
                seconds = median_times(paths, repeats)
                rows.append({"encoder": encoder, "batch": batch, **{f"{name}_s": t for name, t in seconds.items()}})
    print(f"{fixed['frames']} frames at {fixed['height']}×{fixed['width']}, {args.threads} threads")
    int8 = "int8" in exports
    print("| encoder | batch | PyTorch eager | ORT fp32 |" + (" ORT int8 |" if int8 else "") + " fp32 vs PyTorch |"
          + (" int8 vs fp32 | int8 vs PyTorch |" if int8 else "") + " items/s (PyTorch, fp32" + (", int8)" if int8 else ")") + " |")
    print("|---|---|---|---|" + ("---|" if int8 else "") + "---|" + ("---|---|" if int8 else "") + "---|")
    for r in rows:
        r["speedup"] = r["torch_s"] / r["onnx_s"]
        r["onnx_items_per_s"] = r["batch"] / r["onnx_s"]
        r["torch_items_per_s"] = r["batch"] / r["torch_s"]
        cells = [r["encoder"], r["batch"], f"{1000 * r['torch_s']:.1f} ms", f"{1000 * r['onnx_s']:.1f} ms"]
        if int8:
            r["int8_vs_fp32"], r["int8_vs_torch"] = r["onnx_s"] / r["int8_s"], r["torch_s"] / r["int8_s"]
            r["int8_items_per_s"] = r["batch"] / r["int8_s"]
            cells.append(f"{1000 * r['int8_s']:.1f} ms")
        cells.append(f"{r['speedup']:.2f}×")
        if int8:
            cells += [f"{r['int8_vs_fp32']:.2f}×", f"{r['int8_vs_torch']:.2f}×"]
        rates = [r["torch_items_per_s"], r["onnx_items_per_s"]] + ([r["int8_items_per_s"]] if int8 else [])
        cells.append(", ".join(f"{x:.1f}" for x in rates))
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.cache:
        rows += index_throughput(args.cache, exports, Path(args.model))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def index_throughput(cache_dir: str, exports: dict[str, Path], model_dir: Path, repeats: int = 3) -> list[dict]:
    """Videos/s of ``build_index`` through PyTorch and each export (``{"onnx": fp32 dir, "int8":
    int8 dir}``) over a whole chunks store: the paths alternate, ``repeats`` passes each, and the
    median pass is reported (one pass over a small store varies by ±20% on a shared 2-core machine)."""
    import tempfile

    from lfvila_cli.search import IndexConfig, build_index

    store = str(Path(cache_dir) / "frames.zarr")
    paths = {"torch": ("torch", model_dir)} | {name: ("onnx", folder) for name, folder in exports.items()}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    videos = 0
    for _ in range(repeats):
        for name, (engine, source) in paths.items():
            with tempfile.TemporaryDirectory() as tmp:
                info = build_index(store, source, IndexConfig(engine=engine, batch=16, device="cpu"), Path(tmp))
            rates[name].append(info["videos_per_s"])
            videos = info["videos"]
    median = {name: statistics.median(r) for name, r in rates.items()}
    label = {"torch": "PyTorch", "onnx": "ORT fp32", "int8": "ORT int8"}
    print(f"indexing {videos} videos (batch 16, median of {repeats} passes): "
          + ", ".join(f"{label[name]} {median[name]:.1f} videos/s" for name in paths)
          + f"; fp32 vs PyTorch {median['onnx'] / median['torch']:.2f}×"
          + (f", int8 vs fp32 {median['int8'] / median['onnx']:.2f}×" if "int8" in median else "")
          + f" (passes: {rates})")
    return [{"indexing": name, "videos": videos, "videos_per_s": median[name], "passes": rates[name]} for name in paths]


if __name__ == "__main__":
    main()
