"""bf16 inference against the fp32 reference, on the CPU, in one run.

    python benchmarks/bench_precision.py                          # lfvila-base, random weights
    python benchmarks/bench_precision.py --workdir lfvila-work    # also the work directory's evaluations

(a) ``lfvila-base`` with random weights (stage 1): the video encoder's forward at 32 × 192×320
    and the text encoder's at 4 × 32 tokens, batch 1, fp32 and bf16 (``torch.autocast``)
    alternating, median of ``--repeats`` after one untimed call each; and how far the bf16
    embeddings are from the fp32 ones (lowest cosine).
(b) With ``--workdir``: every task scored by the directory's newest evaluate artifact of each
    (model, task), re-scored through ``report.run_evaluate`` at fp32 and at bf16 into a temporary
    directory (the store is not written): wall time of each, the headline figure (text→video
    R@1 or accuracy) at each, and how much the predictions agree (lowest cosine of the
    embeddings, or the share of the same answers).

Threads: ``--threads`` (default 2). bf16 is only faster where the CPU computes it natively
(AVX512-BF16 or AMX; printed first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def base_encoders(repeats: int) -> list[dict]:
    """(a): lfvila-base stage 1, random weights."""
    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.precision import autocast
    from lfvila_cli.model.presets import get_preset

    torch.manual_seed(0)
    config = get_preset("lfvila-base", "stage1", text_model="random")  # the base BERT's architecture, offline
    model = build_model(config).eval()
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn(1, 32, 3, 192, 320, generator=gen)
    ids = torch.randint(1000, 30000, (1, 4, 32), generator=gen)
    mask = torch.ones_like(ids)
    cpu = torch.device("cpu")
    rows = []
    for name, call in (("video", lambda: model.encode_video(frames).global_embedding),
                       ("text", lambda: model.encode_text(ids, mask).paragraph_embedding)):
        out, times = {}, {"fp32": [], "bf16": []}
        for _ in range(repeats):  # alternate, so a disturbance hits both
            for precision in ("fp32", "bf16"):
                with torch.inference_mode(), autocast(precision, cpu):
                    if precision not in out:
                        out[precision] = call()  # untimed first call
                    t0 = time.perf_counter()
                    call()
                    times[precision].append(time.perf_counter() - t0)
        cosine = float(torch.nn.functional.cosine_similarity(out["fp32"], out["bf16"], dim=-1).min())
        fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
        rows.append({"encoder": name, "fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16, "min_cosine": cosine})
    return rows


def workdir_evaluations(workdir: Path) -> list[dict]:
    """(b): the newest evaluate artifact of each (model, task), re-scored at fp32 and bf16."""
    from lfvila_cli.pipeline.artifacts import Workdir
    from lfvila_cli.report import EvaluateConfig, run_evaluate
    from lfvila_cli.stages.cache import corpus_of, frame_store_url

    wd = Workdir(workdir)
    seen, rows = set(), []
    for artifact in sorted(wd.artifacts("evaluate"), key=lambda a: a.manifest.get("created", ""), reverse=True):
        config = dict(artifact.config)
        which = (config.get("model"), artifact.summary.get("task"))
        if which in seen:
            continue
        seen.add(which)
        cache = wd.input_of(artifact, "cache")
        model = wd.input_of(artifact, config.get("model", "finetune"))
        if cache is None or model is None:
            continue
        row = {"task": which[1], "model": which[0]}
        predictions = {}
        for precision in ("fp32", "bf16"):
            cfg = EvaluateConfig(**{**config, "precision": precision, "heatmap_items": 0, "alignment_videos": 0})
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                summary = run_evaluate(cfg, corpus_of(wd, cache), frame_store_url(cache), model.path, model.config, Path(out))
                row[f"{precision}_s"] = time.perf_counter() - t0
                lines = (Path(out) / "predictions.jsonl").read_text().splitlines()
            m = summary["metrics"]
            row[precision] = m["text_to_video"]["R@1"] if "text_to_video" in m else m["accuracy"]
            predictions[precision] = [json.loads(line) for line in lines]
        same = sum(a == b for a, b in zip(predictions["fp32"], predictions["bf16"]))
        row["same_predictions"] = f"{same}/{len(predictions['fp32'])}"
        row["metric"] = "text→video R@1" if "text_to_video" in m else "accuracy"
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="", help="also re-score this work directory's evaluations")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-base", action="store_true", help="only (b)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lfvila_cli.model.precision import native_bf16

    print(f"torch {torch.__version__}, {args.threads} threads, native bf16 on this CPU: {native_bf16(torch.device('cpu'))}")
    result = {}
    if not args.skip_base:
        result["base"] = base_encoders(args.repeats)
        print("\nlfvila-base stage 1, random weights, batch 1 (video 32 × 192×320, text 4 × 32 tokens)")
        print("| encoder | fp32 | bf16 | speed-up | lowest cosine bf16 vs fp32 |\n|---|---|---|---|---|")
        for r in result["base"]:
            print(f"| {r['encoder']} | {r['fp32_s']:.3f} s | {r['bf16_s']:.3f} s | {r['speedup']:.2f}× | {r['min_cosine']:.5f} |")
    if args.workdir:
        result["evaluations"] = workdir_evaluations(Path(args.workdir))
        print(f"\n{args.workdir}: each evaluation re-scored at fp32 and bf16 (same predictions: ranks or answers per item)")
        print("| task | model | metric | fp32 | bf16 | fp32 time | bf16 time | same predictions |\n|---|---|---|---|---|---|---|---|")
        for r in result["evaluations"]:
            print(f"| {r['task']} | {r['model']} | {r['metric']} | {r['fp32']:.3f} | {r['bf16']:.3f} | {r['fp32_s']:.1f} s | {r['bf16_s']:.1f} s | {r['same_predictions']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
