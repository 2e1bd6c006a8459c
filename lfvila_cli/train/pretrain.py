"""The body of ``lfvila pretrain --stage 1|2`` (docs/method.md §4, §5) as a library function.

``run_pretrain(cfg, corpus_path, store_url, out_dir, init_from=..., rank=..., world_size=...,
progress=..., resume=...)`` trains one pre-training stage over the corpus' train split, validates
on its val split every ``cfg.val_every`` steps and at the end, and writes the finished model:

    out_dir/config.json        the LfvilaConfig (``lfvila_cli.config.to_dict``)
    out_dir/model.safetensors  the state dict (tensors shared under several names stored once;
                               the aliases are in the file's metadata, ``load_weights`` restores them)
    out_dir/tokenizer/         the tokenizer the model was trained with
    out_dir/metrics.jsonl      every logged training step, then the validation records ("split": "val")
    out_dir/loss.png           the loss curves (one labelled panel per term, matplotlib)
    out_dir/run/               the trainer's run directory (checkpoints, configs, its metrics)

Stage 1 trains the video encoder, text layers 0–11 and the projections on VPC + MTC; its video
encoder starts from random weights, or with ``video_init`` set from a Swin-2D checkpoint inflated to
3-D (docs/method.md §2: Swin-B 22k 384 for the base preset; ``model.weights.load_swin2d``). Stage 2
starts from a stage-1 artifact (``init_from``): its weights are loaded strictly into every part
that a stage-1 model has, everything from stage 1 is frozen, and layers 12–23, the video token
embedding and the MLM/VTM heads train on MLM + VTM. Stage 2 reuses the stage-1 tokenizer unless
one is named.

Every random draw of a loss (the MTC plan, MLM masking, VTM pairing) comes from a generator seeded
by ``(objectives.seed, step)``: the same on every rank and after a resume.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import check
from ..data.corpus import read_split
from ..data.loader import LoaderConfig
from ..errors import ConfigError, DataError, LfvilaError
from ..model.pretrained import TOKENIZER_DIR, WEIGHTS_FILE, load_stage1_into, save_pretrained
from ..objectives import ObjectiveConfig
from .engine import TrainConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
VAL_FILE = "val_metrics.jsonl"  # in run/, next to the trainer's metrics.jsonl
_STAGE2_STREAM = 2  # keeps stage-2 draws apart from stage-1 draws at the same step
_VIDEO_INIT_STAGE1_ONLY = "applies to stage 1 only (stage 2 starts from the stage-1 model, video encoder included)"


def _quickstart_train() -> TrainConfig:
    # The tiny model on the bundled example, on a CPU (stages/quickstart.yaml sets the epochs).
    # Peak lr 2e-4: at 5e-4 and above the tiny model's embeddings collapsed to one point in the
    # first few dozen steps (VPC stuck at 2·ln B) or learned far slower (README, "Learning check").
    return TrainConfig(lr=2e-4, micro_batch=16, epochs=10, precision="fp32", checkpoint_every=200, warmup_steps=20)


@dataclass
class PretrainConfig:
    stage: int = 1
    model: str = "lfvila-tiny"  # preset name
    text_model: str = "random"  # "random" = the preset's BERT architecture, random weights; else hub id / path
    tokenizer: str = ""  # "" = train a WordPiece tokenizer on the train sentences (stage 2: the stage-1 one)
    tokenizer_vocab_size: int = 2000
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(max_tokens=32))
    # Loss weights, temperature, MTC sampling, MLM rate (docs/method.md §4); saved in the model's config.json.
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=_quickstart_train)
    val_every: int = 50  # steps; 0 = only at the end
    val_max_samples: int = 256  # 0 = the whole val split
    val_batch: int = 8
    workers: int = 1  # DataLoader worker processes feeding training (0 = load in the training process)
    # Stage 1: "" = random video encoder; else a Swin-2D checkpoint (.pth / .bin / .safetensors, or a
    # directory holding model.safetensors / pytorch_model.bin) inflated into it (docs/method.md §2: Swin-B
    # ImageNet-22k 384 px, window 12, e.g. swin_base_patch4_window12_384_22k.pth, for lfvila-base).
    video_init: str = ""

    def __post_init__(self) -> None:
        check(self.stage in (1, 2), "stage", f"must be 1 or 2, got {self.stage}")
        check(bool(self.model), "model", "needs a preset name (e.g. lfvila-tiny)")
        check(self.tokenizer_vocab_size > 5, "tokenizer_vocab_size", f"must be > 5, got {self.tokenizer_vocab_size}")
        check(self.val_every >= 0, "val_every", f"must be >= 0, got {self.val_every}")
        check(self.val_max_samples >= 0, "val_max_samples", f"must be >= 0, got {self.val_max_samples}")
        check(self.val_batch >= 1, "val_batch", f"must be >= 1, got {self.val_batch}")
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        check(self.stage == 1 or not self.video_init, "video_init", _VIDEO_INIT_STAGE1_ONLY)


# The video encoder's parts no Swin-2D layer may fit: the clip-feature head (docs/method.md §2) is loaded from
# the Swin merge after the clip-feature layer only when the widths agree (they do for Swin-B).
VIDEO_INIT_ALLOW_MISSING = (r"^clip_merge\.", r"^clip_norm\.")


def video_init_file(source: str) -> Path:
    """The file ``video_init`` names (a directory: its model.safetensors / pytorch_model.bin);
    a one-line error naming the key when there is none."""
    from ..model.weights import WeightImportError, checkpoint_file

    try:
        return checkpoint_file(source)
    except WeightImportError as exc:
        raise WeightImportError(f"config key 'video_init': {exc}") from None


def init_video_encoder(model, source: str) -> dict[str, Any]:
    """Initialise ``model.video_encoder`` from the Swin-2D checkpoint ``source`` (docs/method.md §2, patch
    kernel tiled) and return the import record for the run summary. Anything but a complete
    import (the clip head aside) is a one-line ``WeightImportError`` naming the key and the file.
    Deterministic and draws no random numbers: every rank that loads the same file gets the
    same weights, and a fresh run's random stream is the one it would have without it."""
    from ..model.weights import WeightImportError, load_swin2d

    try:
        report = load_swin2d(model.video_encoder, source).check(allow_missing=VIDEO_INIT_ALLOW_MISSING)
    except WeightImportError as exc:
        raise WeightImportError(f"config key 'video_init': {exc}") from None
    reasons: dict[str, int] = {}
    for reason in report.skipped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "path": str(source),
        "source": report.source,
        "summary": report.summary(),
        "loaded": len(report.loaded),
        "missing": report.missing,
        "skipped": reasons,
        "notes": report.notes,
    }


# ---------------------------------------------------------------------------------------------
# Pre-training
# ---------------------------------------------------------------------------------------------


def _step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    # One generator per (seed, step, stream): identical on every rank and after a resume.
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


def resolve_tokenizer(
    name: str,
    vocab_size: int,
    texts,
    init_from: Optional[Path],
    out_tok: Path,
    rank: int,
    world_size: int,
    resume: Optional[str],
    missing_message: Optional[str] = None,
):
    """Load or train the tokenizer of a training run; it is saved to ``out_tok`` either way.

    In order: a resumed run's own tokenizer (never retrained: WordPiece may order equally
    frequent pieces differently from one process to the next), ``name`` (hub id or directory),
    the tokenizer of the model it starts from (``init_from/tokenizer``), or — unless
    ``missing_message`` says that one is required — a WordPiece tokenizer of ``vocab_size``
    trained on ``texts`` (a callable returning them, so they are built only when needed).
    """
    from ..data.tokenizer import load_tokenizer, train_wordpiece_tokenizer

    source: Optional[Path] = None  # a local tokenizer directory, copied as it is
    if resume is not None and (out_tok / "tokenizer_config.json").is_file():
        return load_tokenizer(out_tok, local_files_only=True)
    if name:
        tokenizer = load_tokenizer(name)
        source = Path(name) if Path(name).is_dir() else None
    elif init_from is not None and (init_from / TOKENIZER_DIR).is_dir():
        source = init_from / TOKENIZER_DIR
        tokenizer = load_tokenizer(source, local_files_only=True)
    elif missing_message is not None:
        raise ConfigError(missing_message)
    else:
        if rank == 0:
            tokenizer = train_wordpiece_tokenizer(texts(), vocab_size, out_tok)
        _barrier(world_size)
        if rank != 0:
            tokenizer = load_tokenizer(out_tok, local_files_only=True)
        return tokenizer
    if rank == 0:
        if source is not None:
            # save_pretrained of a loaded fast tokenizer drops vocab.txt: copy the files instead
            shutil.copytree(source, out_tok, dirs_exist_ok=True)
        else:
            tokenizer.save_pretrained(str(out_tok))
    return tokenizer


def _ensure_distributed(world_size: int) -> None:
    """Start the process group early (the tokenizer step needs a barrier) when several ranks run."""
    if world_size > 1:
        from .engine import init_distributed

        init_distributed()


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import deepspeed.comm as dist

        dist.barrier()


def _move(batch: dict, param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    frames = batch["frames"].to(device=param.device, dtype=param.dtype)
    return frames, batch["input_ids"].to(param.device), batch["attention_mask"].to(param.device)


def stage1_loss(model_call, model, batch: dict, step: int, objectives) -> dict[str, torch.Tensor]:
    frames, ids, mask = _move(batch, next(model.parameters()))
    out = model_call(frames, ids, mask)
    from ..objectives import pretrain_stage1_loss

    gen = _step_generator(objectives.seed, step)
    return pretrain_stage1_loss(out.video_embedding, out.paragraph_embedding, out.sentence_embeddings, out.clip_embeddings, gen, objectives)


def stage2_loss(model_call, model, batch: dict, step: int, objectives, tokenizer, with_accuracy: bool = False) -> dict[str, torch.Tensor]:
    from ..objectives import draw_stage2_targets, stage2_output_loss

    frames, ids, mask = _move(batch, next(model.parameters()))
    gen = _step_generator(objectives.seed, step, _STAGE2_STREAM)
    targets = draw_stage2_targets(ids, mask, tokenizer.all_special_ids, len(tokenizer), tokenizer.mask_token_id, gen, objectives)
    out = model_call(frames, targets.input_ids, mask, video_index=targets.video_index)
    return stage2_output_loss(out, targets, objectives, with_accuracy)


@torch.no_grad()
def validate_stage2(model, dataset, batch_size: int, objectives, tokenizer) -> dict[str, float]:
    """Mean MLM and VTM losses (weighted, as in training), VTM accuracy and MLM accuracy (masked
    tokens of matched pairs) over ``dataset``, with masking/pairing draws fixed per batch (eval mode)."""
    from ..data.loader import make_loader

    was = model.training
    model.eval()
    sums = {"mlm": 0.0, "vtm": 0.0, "total": 0.0}
    correct, seen, batches = 0.0, 0, 0
    mlm_correct, mlm_count = 0.0, 0.0
    try:
        for i, batch in enumerate(make_loader(dataset, batch_size, shuffle=False, drop_last=False)):
            if batch["frames"].shape[0] < 2:
                continue  # VTM needs two samples to mismatch
            terms = stage2_loss(model, model, batch, 10**6 + i, objectives, tokenizer, with_accuracy=True)
            for k in sums:
                sums[k] += float(terms[k])
            correct += float(terms["vtm_correct"])
            mlm_correct += float(terms["mlm_correct"])
            mlm_count += float(terms["mlm_count"])
            seen += batch["frames"].shape[0]
            batches += 1
    finally:
        model.train(was)
    if batches == 0:
        return {}
    out = {f"loss/{k}": v / batches for k, v in sums.items()}
    out["vtm_accuracy"] = correct / seen
    if mlm_count:
        out["mlm_accuracy"] = mlm_correct / mlm_count
    return out


def _subset_samples(samples: list, limit: int) -> list:
    """The first ``limit`` samples (the example lists each twin right after its base)."""
    if not limit or len(samples) <= limit:
        return samples
    return samples[:limit]


def run_pretrain(
    cfg: PretrainConfig,
    corpus_path: Path,
    store_url: str,
    out_dir: Path,
    *,
    init_from: Optional[Path] = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    resume: Optional[str] = None,
) -> dict[str, Any]:
    """Train pre-training stage ``cfg.stage`` and write the finished model into ``out_dir``
    (see the module docstring). ``resume``: None (fresh), "auto" (newest complete checkpoint in
    ``out_dir/run``) or a checkpoint path. Returns a JSON-able summary."""
    from ..data.loader import PretrainDataset
    from ..evaluation import evaluate_stage1
    from ..model.lfvila import build_model, count_parameters
    from ..model.presets import get_preset
    from .engine import Trainer

    corpus_path, out_dir = Path(corpus_path), Path(out_dir)
    init_from = Path(init_from) if init_from is not None else None
    if cfg.stage == 2 and cfg.video_init:  # also checked when the config is built; cfg may be edited since
        raise ConfigError(f"config key 'video_init': {_VIDEO_INIT_STAGE1_ONLY}")
    if cfg.stage == 2 and init_from is None:
        raise ConfigError("pretrain --stage 2 starts from a stage-1 artifact: give init_from (--init-from)")
    if cfg.stage == 1 and init_from is not None:
        raise ConfigError("pretrain --stage 1 starts from scratch (or the preset's pretrained text model): init_from is for stage 2")
    if init_from is not None and not (init_from / WEIGHTS_FILE).is_file():
        raise LfvilaError(f"--init-from {init_from}: no {WEIGHTS_FILE} (is it a finished stage-1 artifact?)")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "run"

    _ensure_distributed(world_size)
    train_samples = read_split(corpus_path, "train")
    val_samples = _subset_samples(read_split(corpus_path, "val"), cfg.val_max_samples)
    if not train_samples:
        raise DataError(f"{corpus_path}: no train-split samples to pre-train on")
    tokenizer = resolve_tokenizer(
        cfg.tokenizer, cfg.tokenizer_vocab_size, lambda: [seg.text for s in train_samples for seg in s.segments],
        init_from, out_dir / TOKENIZER_DIR, rank, world_size, resume,
        missing_message=(
            "config key 'tokenizer': stage 2 needs the stage-1 artifact's tokenizer (none in --init-from) or a named one"
            if cfg.stage == 2 else None
        ),
    )
    train_ds = PretrainDataset(train_samples, store_url, tokenizer, cfg.loader, train=True, video_root=corpus_path.parent)
    val_ds = PretrainDataset(val_samples, store_url, tokenizer, cfg.loader, train=False, video_root=corpus_path.parent) if val_samples else None
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    per_rank = len(train_ds) // world_size
    steps_per_epoch = per_rank // cfg.train.micro_batch // cfg.train.grad_accum
    if steps_per_epoch < 1:
        raise DataError(
            f"{corpus_path}: {len(train_ds)} usable train samples make no full step of "
            f"{cfg.train.micro_batch} × {cfg.train.grad_accum} × {world_size} ranks (lower train.micro_batch)"
        )

    variant = "stage1" if cfg.stage == 1 else "stage2"
    config = get_preset(cfg.model, variant, text_model=cfg.text_model)
    config.objectives = cfg.objectives
    if config.text.bert_config is not None:
        # A randomly initialised BERT takes the tokenizer's vocabulary: with BERT's 30,522 rows
        # for the example's ~90 words, the MLM head spends stage 2 unlearning ids that never occur.
        config.text.bert_config = {**config.text.bert_config, "vocab_size": len(tokenizer)}
    if cfg.loader.max_tokens > config.text.max_tokens:
        raise ConfigError(f"config key 'loader.max_tokens': {cfg.loader.max_tokens} exceeds the model's {config.text.max_tokens} tokens per sentence")
    torch.manual_seed(cfg.train.seed)  # the fresh initialisation is reproducible
    model = build_model(config)
    rows = model.text_encoder.word_embeddings.num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"config key 'tokenizer': {len(tokenizer)} tokens, but the text model '{cfg.text_model}' has {rows} embedding rows")
    init_report = None
    if cfg.stage == 2:
        init_report = load_stage1_into(model, init_from)
    video_init = None
    if cfg.video_init:
        # Every rank loads the same file (no broadcast needed), before the Trainer copies the weights
        # into its engine. A resumed run does it too, and the checkpoint then loads over it.
        video_init = init_video_encoder(model, cfg.video_init)
    trainable = model.set_trainable(variant)
    objectives = config.objectives

    if cfg.stage == 1:
        def loss_fn(engine, batch, step):
            return stage1_loss(engine, engine.module, batch, step, objectives)
    else:
        def loss_fn(engine, batch, step):
            return stage2_loss(engine, engine.module, batch, step, objectives, tokenizer)

    trainer = Trainer(model, loss_fn, cfg.train, run_dir)
    if (trainer.rank, trainer.world_size) != (rank, world_size):
        raise LfvilaError(
            f"run_pretrain was told rank {rank} of {world_size}, the process group says {trainer.rank} of {trainer.world_size}"
        )
    if not progress:
        trainer._progress = lambda total: None  # no bar even on a terminal
    val_records: list[dict] = []
    val_path = run_dir / VAL_FILE

    validated: set[int] = set()  # steps validated by this process: the same on every rank

    def validate(step: int) -> None:
        # Stage 1: every rank embeds its share of the val split (all must call); stage 2 (MLM and
        # VTM accuracy over the val batches as they are drawn): rank 0 alone.
        if val_ds is None or step in validated or (cfg.stage == 2 and rank != 0):
            return
        validated.add(step)
        t0 = time.perf_counter()
        module = trainer.engine.module
        with torch.random.fork_rng(devices=[]):  # validation leaves the training RNG (dropout) untouched
            if cfg.stage == 1:
                metrics = evaluate_stage1(module, val_ds, cfg.val_batch, rank=rank, world_size=world_size)
            else:
                metrics = validate_stage2(module, val_ds, cfg.val_batch, objectives, tokenizer)
        if rank != 0:
            return
        drop_records_from(val_records, step, val_path)
        record = {"step": step, "split": "val", **metrics, "seconds": time.perf_counter() - t0}
        val_records.append(record)
        with open(val_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_json_clean(record)) + "\n")
        log.info("val at step %d: %s", step, {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})

    batches = batch_source(trainer, train_ds, cfg.train, cfg.workers, cfg.val_every, validate)

    if rank == 0 and resume is None and val_path.exists():
        val_path.unlink()  # a fresh run starts its validation log afresh
    if rank == 0 and resume is not None and val_path.exists():
        val_records.extend(json.loads(line) for line in val_path.read_text(encoding="utf-8").splitlines() if line.strip())
    before = None
    if cfg.stage == 1 and resume is None and val_ds is not None:  # the untrained model: a baseline
        before = evaluate_stage1(model, val_ds, cfg.val_batch, rank=rank, world_size=world_size)
    result = trainer.train(batches, steps_per_epoch, resume=resume)
    if rank == 0:
        val_records[:] = [r for r in val_records if r["step"] <= result.steps]
    validate(result.steps)
    _barrier(world_size)

    summary: dict[str, Any] = {
        "stage": cfg.stage,
        "model": cfg.model,
        "steps": result.steps,
        "steps_this_run": len(result.losses),
        "skipped_steps": result.bad_steps,
        "skipped_samples": {"train": dict(train_ds.skipped), "val": dict(val_ds.skipped) if val_ds is not None else {}},
        "excluded_windows": train_ds.excluded_windows,
        "train_samples": len(train_ds),
        "val_samples": len(val_ds) if val_ds is not None else 0,
        "trainable_parameters": trainable,
        "parameters": count_parameters(model),
        "seconds": time.perf_counter() - started,
    }
    if init_report is not None:
        summary["init_from"] = {"path": str(init_from), **init_report}
    if video_init is not None:
        summary["video_init"] = video_init
    if rank == 0:
        train_records = _read_jsonl(run_dir / "metrics.jsonl")
        last = train_records[-1] if train_records else {}
        summary["final_losses"] = {k[len("loss/"):]: v for k, v in last.items() if k.startswith("loss/")}
        summary["first_losses"] = {k[len("loss/"):]: v for k, v in train_records[0].items() if k.startswith("loss/")} if train_records else {}
        train_time = [r.get("samples_per_s") for r in train_records if r.get("samples_per_s")]
        if train_time:
            summary["samples_per_s"] = float(np.median(train_time))
        summary["val"] = {k: v for k, v in val_records[-1].items() if k not in ("split",)} if val_records else {}
        if before is not None:
            summary["val_untrained"] = before
        _write_finished(model, config, out_dir, train_records, val_records)
    return summary


def batch_source(trainer, dataset, train_cfg, workers: int, val_every: int, validate):
    """``batches(epoch, start)`` for ``Trainer.train`` over ``dataset`` on this rank, calling
    ``validate(step)`` every ``val_every`` optimizer steps, between steps (before the next
    micro-batch is used)."""
    from ..data.loader import make_loader

    def batches(epoch: int, start: int):
        loader = make_loader(
            dataset, train_cfg.micro_batch, rank=trainer.rank, world_size=trainer.world_size, epoch=epoch,
            start_index=start, num_workers=workers,
        )
        # A DataLoader iterator draws its base seed from the global torch RNG; a resumed run opens
        # one more iterator than the uninterrupted run, so keep that draw off the training RNG.
        with torch.random.fork_rng(devices=[]):
            iterator = iter(loader)
        for i, batch in enumerate(iterator):
            step = trainer.step
            if val_every and step and step % val_every == 0 and (start + i) % train_cfg.grad_accum == 0:
                validate(step)
            yield batch

    return batches


def drop_records_from(records: list[dict], step: int, path: Path) -> bool:
    """Drop the validation records of ``step`` and later (an earlier attempt that crashed before
    checkpointing past them: this run validates those steps again) and rewrite ``path``.
    Returns whether any went."""
    if not any(r["step"] >= step for r in records):
        return False
    records[:] = [r for r in records if r["step"] < step]
    path.write_text("".join(json.dumps(_json_clean(r)) + "\n" for r in records), encoding="utf-8")
    return True


def _json_clean(record: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in record.items()}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_finished(
    model, config, out_dir: Path, train_records: list[dict], val_records: list[dict], val_keys: tuple[str, ...] = ("R@1", "loss/total"),
) -> None:
    """config.json, model.safetensors, metrics.jsonl and loss.png (the tokenizer is already there);
    ``val_keys``: the validation figures drawn beside the training losses."""
    save_pretrained(model, config, out_dir)
    with open(out_dir / METRICS_FILE, "w", encoding="utf-8") as f:
        for record in train_records:
            f.write(json.dumps({"split": "train", **record}) + "\n")
        for record in val_records:
            f.write(json.dumps(_json_clean(record)) + "\n")
    series: dict[str, tuple[list, list]] = {}
    for key in sorted({k for r in train_records for k in r if k.startswith("loss/")}, key=lambda k: (k != "loss/total", k)):
        pts = [(r["step"], r[key]) for r in train_records if r.get(key) is not None]
        series[f"train {key}"] = ([p[0] for p in pts], [p[1] for p in pts])
    for key in val_keys:
        pts = [(r["step"], r[key]) for r in val_records if isinstance(r.get(key), (int, float))]
        if pts:
            series[f"val {key}"] = ([p[0] for p in pts], [p[1] for p in pts])
    from ..plots import plot_curves

    plot_curves(series, out_dir / PLOT_FILE)
