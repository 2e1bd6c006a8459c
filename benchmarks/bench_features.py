"""Stage 2 with and without the feature cache (``lfvila features``; docs/method.md §8).

Two parts, one run each:

``quickstart``: the quickstart's stage 2 (stages/quickstart.yaml's pretrain2 entry: 10 epochs of
12 steps of 16, flip 0) on the quickstart's frame store and stage-1 model, found in a work
directory that ran it (``--workdir``: its newest ``pretrain1`` artifact and the cache it was
trained on). Runs the reference (the encoder every step), then for each ``--views`` a feature
build and stage 2 from it, each in a scratch directory (``--out``; the work directory is only
read). Reports per run: wall seconds, seconds per step (training wall time / steps, validation
at the end included), MLM and VTM accuracy on the val split; per build: seconds and bytes per
sample.

``base``: ``lfvila-base`` stage 2 at 32×192×320 with random weights (BERT-large architecture,
no hub download), micro-batch ``--base-batch``: the seconds of one optimizer step (forward,
backward, AdamW over the stage-2 parameters) from frames and from cached bf16 tokens, the
seconds of the frozen encoder's forward per sample (what a feature build costs per view) and
the bytes of one cached view. ``--base-steps`` timed steps after one untimed step.

    python benchmarks/bench_features.py --workdir lfvila-work --views 1 10 --json features.json
    python benchmarks/bench_features.py --skip-quickstart --base-batch 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lfvila_cli.config import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def quickstart_stage2_config():
    """The quickstart's pretrain2 config (its entry of stages/quickstart.yaml over the defaults)."""
    from lfvila_cli.pipeline.stage import resolve_config
    from lfvila_cli.stages import get_stage

    entry = next(e for e in load_yaml(ROOT / "stages" / "quickstart.yaml")["stages"] if e["stage"] == "pretrain2")
    return resolve_config(get_stage("pretrain2"), layers=[entry["config"]])


def run_quickstart(workdir: Path, out: Path, views: list[int]) -> dict:
    import dataclasses

    from lfvila_cli.pipeline.artifacts import Workdir
    from lfvila_cli.stages.cache import corpus_of, frame_store_url
    from lfvila_cli.train.config import FeaturesConfig
    from lfvila_cli.train.features import build_features
    from lfvila_cli.train.pretrain import run_pretrain

    wd = Workdir(workdir)
    stage1 = wd.resolve("pretrain1", "latest")
    cache = wd.input_of(stage1, "cache")
    corpus, store = corpus_of(wd, cache), frame_store_url(cache)
    cfg = quickstart_stage2_config()
    out.mkdir(parents=True, exist_ok=True)

    def stage2(name: str, features=None) -> dict:
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        t0 = time.perf_counter()
        summary = run_pretrain(dataclasses.replace(cfg, features=features is not None), corpus, store, target, init_from=stage1.path, progress=False, features=features)
        wall = time.perf_counter() - t0
        val = summary.get("val") or {}
        return {
            "wall_s": round(wall, 1), "train_s": round(summary["seconds"], 1), "steps": summary["steps"],
            "s_per_step": round(summary["seconds"] / summary["steps"], 3),
            "mlm_accuracy": val.get("mlm_accuracy"), "vtm_accuracy": val.get("vtm_accuracy"),
        }

    result = {"stage1": str(stage1.path), "cache": str(cache.path), "runs": {}}
    result["runs"]["encoder (reference)"] = stage2("reference")
    for k in views:
        url = out / f"features-{k}.zarr"
        shutil.rmtree(url, ignore_errors=True)
        t0 = time.perf_counter()
        built = build_features(corpus, store, stage1.path, FeaturesConfig(views=k, loader=cfg.loader, batch=16), str(url), progress=False)
        build_s = time.perf_counter() - t0
        run = stage2(f"cached-{k}", str(url))
        run.update(build_s=round(build_s, 1), total_s=round(build_s + run["wall_s"], 1), bytes_per_view=built["bytes_per_view"],
                   bytes_per_sample=built["bytes_per_sample"], store_bytes=sum(f.stat().st_size for f in url.rglob("*") if f.is_file()))
        result["runs"][f"cached, {k} view(s)"] = run
    return result


def run_base(batch: int, steps: int) -> dict:
    from lfvila_cli.model.lfvila import build_model
    from lfvila_cli.model.presets import get_preset
    from lfvila_cli.objectives import ObjectiveConfig
    from lfvila_cli.train.pretrain import stage2_loss

    torch.manual_seed(0)
    config = get_preset("lfvila-base", "stage2", text_model="random")
    model = build_model(config)
    model.set_trainable("stage2")
    model.train()
    vocab = model.text_encoder.word_embeddings.num_embeddings

    class Tok:  # what stage2_loss reads of a tokenizer
        all_special_ids = [0, 100, 101, 102, 103]
        mask_token_id = 103

        def __len__(self):
            return vocab

    frames = torch.randn(batch, 32, 3, 192, 320)
    ids = torch.randint(1000, vocab, (batch, 4, 50))
    ids[:, :, 0], ids[:, :, -1] = 101, 102
    mask = torch.ones_like(ids)
    with torch.no_grad():
        t0 = time.perf_counter()
        tokens = model.video_encoder(frames).tokens
        encode_s = (time.perf_counter() - t0) / batch
    cached = tokens.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    objectives = ObjectiveConfig()

    def step(batch_dict, i):
        terms = stage2_loss(model, model, batch_dict, i, objectives, Tok())
        terms["total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out = {"batch": batch, "token_shape": list(tokens.shape[1:]), "bytes_per_view": int(tokens[0].numel() * 2), "encoder_forward_s_per_sample": round(encode_s, 2)}
    for name, batch_dict in (("frames", {"frames": frames, "input_ids": ids, "attention_mask": mask}), ("cached", {"video_tokens": cached, "input_ids": ids, "attention_mask": mask})):
        step(batch_dict, 0)  # untimed
        t0 = time.perf_counter()
        for i in range(steps):
            step(batch_dict, i + 1)
        out[f"s_per_step_{name}"] = round((time.perf_counter() - t0) / steps, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("lfvila-work"), help="a work directory that ran the quickstart (read only)")
    parser.add_argument("--out", type=Path, default=Path("bench-features"), help="scratch directory for the runs")
    parser.add_argument("--views", type=int, nargs="*", default=[1, 10], help="views per feature build (none: the reference only)")
    parser.add_argument("--skip-quickstart", action="store_true")
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--base-batch", type=int, default=2)
    parser.add_argument("--base-steps", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"threads": torch.get_num_threads()}
    if not args.skip_quickstart:
        result["quickstart"] = run_quickstart(args.workdir, args.out, args.views)
        print("| stage 2 (quickstart) | feature build s | stage-2 wall s | s/step | total s | bytes/sample | MLM acc | VTM acc |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in result["quickstart"]["runs"].items():
            print(f"| {name} | {r.get('build_s', '—')} | {r['wall_s']} | {r['s_per_step']} | {r.get('total_s', r['wall_s'])} | "
                  f"{r.get('bytes_per_sample', '—')} | {r['mlm_accuracy']:.3f} | {r['vtm_accuracy']:.3f} |")
    if not args.skip_base:
        result["base"] = run_base(args.base_batch, args.base_steps)
        print(json.dumps(result["base"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
