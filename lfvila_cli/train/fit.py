"""The one fit loop: ``fit(recipe, corpus_path, out_dir, rank=..., world_size=...,
progress=..., resume=...)`` trains a ``Recipe`` (train/recipe.py) with the ``Trainer``
(train/engine.py) over the corpus' train split, validates on its val split every
``cfg.val_every`` steps and at the end, and writes the finished model:

    out_dir/config.json        the LfvilaConfig (``lfvila_cli.config.to_dict``)
    out_dir/model.safetensors  the state dict (tensors shared under several names stored once;
                               the aliases are in the file's metadata, ``load_weights`` restores them)
    out_dir/tokenizer/         the tokenizer the model was trained with
    out_dir/metrics.jsonl      every logged training step, then the validation records ("split": "val")
    out_dir/loss.png           the loss curves (one labelled panel per term, matplotlib)
    out_dir/selection.json     only a selecting recipe: which step was selected, on what figure
    out_dir/run/               the trainer's run directory (checkpoints, configs, its metrics.jsonl,
                               val_metrics.jsonl; a selecting recipe: best/ and best.json, the best so far;
                               train.tensorboard: tensorboard/, the event files, train/events.py)

Checkpoint selection: a recipe with ``select_on`` keeps the weights that scored best on
**validation** (never test; docs/method.md §7) and finishes with them; one without finishes with
the final weights. Validation never touches the training random stream (``torch.random.fork_rng``),
and a resumed run drops the validation records of steps an earlier, crashed attempt validated
past its last checkpoint (this run validates them again).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..data.corpus import read_split
from ..errors import ConfigError, DataError, LfvilaError
from ..model.pretrained import TOKENIZER_DIR, WEIGHTS_FILE, save_pretrained
from .recipe import SELECTED_ON, Recipe

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
VAL_FILE = "val_metrics.jsonl"  # in run/, next to the trainer's metrics.jsonl
BEST_DIR = "best"  # in run/: the best weights so far (a selecting recipe)
BEST_FILE = "best.json"  # in run/: {"step", "value"} of those weights
SELECTION_FILE = "selection.json"


@dataclass
class FitRun:
    """What a recipe's ``summary`` reads: the trained run as ``fit`` saw it."""

    model: Any
    config: Any
    result: Any  # engine.TrainResult
    train_ds: Any
    val_ds: Any
    rank: int
    train_records: list[dict] = field(default_factory=list)  # rank 0 only
    val_records: list[dict] = field(default_factory=list)  # rank 0 only
    baseline: Optional[dict] = None


def fit(
    recipe: Recipe,
    corpus_path: Path,
    out_dir: Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    resume: Optional[str] = None,
) -> dict[str, Any]:
    """Train ``recipe`` and write the finished model into ``out_dir`` (see the module docstring).
    ``resume``: None (fresh), "auto" (newest complete checkpoint in ``out_dir/run``) or a checkpoint
    path. Returns a JSON-able summary."""
    import numpy as np
    import torch

    from ..model.lfvila import count_parameters
    from ..model.precision import autocast, resolve_precision
    from ..model.pretrained import float_state, load_weights, save_weights
    from .engine import Trainer
    from .events import require_tensorboard

    cfg = recipe.cfg
    corpus_path, out_dir = Path(corpus_path), Path(out_dir)
    recipe.check()
    require_tensorboard(cfg.train)  # before the tokenizer and the data, not after them
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "run"
    best_dir = run_dir / BEST_DIR

    ensure_distributed(world_size)
    train_samples = read_split(corpus_path, "train")
    val_samples = subset_samples(read_split(corpus_path, "val"), cfg.val_max_samples)
    if not train_samples:
        raise DataError(f"{corpus_path}: no train-split samples to {recipe.purpose}")
    recipe.prepare(corpus_path, train_samples)
    tokenizer = resolve_tokenizer(
        cfg.tokenizer, cfg.tokenizer_vocab_size, lambda: recipe.tokenizer_texts(train_samples), recipe.init_from,
        out_dir / TOKENIZER_DIR, rank, world_size, resume, missing_message=recipe.tokenizer_required,
    )
    recipe.tokenizer = tokenizer
    config = recipe.model_config(tokenizer)
    train_ds, val_ds = recipe.datasets(tokenizer, train_samples, val_samples)
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    recipe.check_data(train_ds, config, corpus_path)
    steps_per_epoch = len(train_ds) // world_size // cfg.train.micro_batch // cfg.train.grad_accum
    if steps_per_epoch < 1:
        raise DataError(
            f"{corpus_path}: {len(train_ds)} usable train samples make no full step of "
            f"{cfg.train.micro_batch} × {cfg.train.grad_accum} × {world_size} ranks (lower train.micro_batch)"
        )
    model = recipe.build_model(config)
    trainable = recipe.set_trainable(model)

    trainer = Trainer(model, recipe.loss, cfg.train, run_dir)
    if (trainer.rank, trainer.world_size) != (rank, world_size):
        raise LfvilaError(
            f"{recipe.entry} was told rank {rank} of {world_size}, the process group says {trainer.rank} of {trainer.world_size}"
        )
    if not progress:
        trainer._progress = lambda total: None  # no bar even on a terminal
    selects = recipe.select_on is not None
    val_records: list[dict] = []
    val_path = run_dir / VAL_FILE
    best_path = run_dir / BEST_FILE
    best: dict[str, Any] = json.loads(best_path.read_text()) if selects and resume is not None and best_path.is_file() else {}

    validated: set[int] = set()  # steps validated by this process: the same on every rank
    # Validation runs at val_precision when training in fp32 (docs/engineering.md §7); bf16 and
    # fp16 weights validate at their own precision (no autocast on top of them).
    val_device = next(trainer.engine.module.parameters()).device
    fp32_training = cfg.train.precision == "fp32"
    val_precision = resolve_precision(cfg.val_precision, val_device) if fp32_training else cfg.train.precision

    def validate(step: int) -> None:
        # Every validating rank predicts (its share of) the val split; rank 0 scores it, keeps the
        # records and, for a selecting recipe, the best weights.
        if val_ds is None or step in validated or (recipe.validate_on_rank0_only and rank != 0):
            return
        validated.add(step)
        t0 = time.perf_counter()
        module = trainer.engine.module
        # validation leaves the training RNG (dropout) untouched
        with torch.random.fork_rng(devices=[]), autocast(val_precision if fp32_training else "fp32", val_device):
            predicted = recipe.predict(module, val_ds, rank, world_size)
        if rank != 0:
            return
        if drop_records_from(val_records, step, val_path) and best and best["step"] >= step:
            best.clear()  # the best of an earlier attempt's dropped records
        fields = recipe.score(predicted)
        record = {"step": step, "split": "val", **fields, "seconds": time.perf_counter() - t0}
        val_records.append(record)
        with open(val_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_clean(record)) + "\n")
        if trainer.events is not None:
            trainer.events.val(record)
        if not selects:
            log.info("val at step %d: %s", step, {k: round(v, 4) if isinstance(v, float) else v for k, v in fields.items()})
            return
        value = fields[SELECTED_ON]
        if not best or value > best["value"]:
            # Weights first, then the record that names them: a crash between leaves the old record
            # pointing at newer weights of a better step, never at missing ones.
            best_dir.mkdir(parents=True, exist_ok=True)
            save_weights(float_state(module), best_dir / (WEIGHTS_FILE + ".tmp"))
            os.replace(best_dir / (WEIGHTS_FILE + ".tmp"), best_dir / WEIGHTS_FILE)  # a kill never leaves half a file
            best.clear()
            best.update({"step": step, "value": value})
            best_path.write_text(json.dumps(best) + "\n")
        log.info("val at step %d: %s = %.4f (best %.4f at step %d)", step, recipe.select_on, value, best["value"], best["step"])

    if rank == 0 and resume is None:
        for path in (val_path, best_path) if selects else (val_path,):
            path.unlink(missing_ok=True)  # a fresh run starts its validation log afresh
    if rank == 0 and resume is not None and val_path.exists():
        val_records.extend(read_jsonl(val_path))
    batches = batch_source(trainer, train_ds, cfg.train, cfg.workers, cfg.val_every, validate)
    baseline = None
    if resume is None and val_ds is not None:  # the untrained model, where the recipe records it
        baseline = recipe.baseline(model, val_ds, rank, world_size)
    result = trainer.train(batches, steps_per_epoch, resume=resume)
    if rank == 0 and any(r["step"] > result.steps for r in val_records):
        # Records past the last step (an earlier attempt that went further): not this run's.
        val_records[:] = [r for r in val_records if r["step"] <= result.steps]
        if best and best["step"] > result.steps:
            best.clear()
    validate(result.steps)
    if trainer.events is not None:
        trainer.events.close()
    barrier(world_size)

    run = FitRun(model, config, result, train_ds, val_ds, rank, baseline=baseline)
    summary: dict[str, Any] = {
        "steps": result.steps,
        "skipped_steps": result.bad_steps,
        "train_samples": len(train_ds),
        "val_samples": len(val_ds) if val_ds is not None else 0,
        "val_precision": val_precision,
        "skipped_samples": {"train": dict(train_ds.skipped), "val": dict(val_ds.skipped) if val_ds is not None else {}},
        "trainable_parameters": trainable,
        "parameters": count_parameters(model),
        "seconds": time.perf_counter() - started,
    }
    if rank == 0:
        if selects:
            if best:
                model.load_state_dict(load_weights(best_dir / WEIGHTS_FILE), strict=True)
                selection = {"step": best["step"], "metric": f"val {recipe.select_on}", "value": best["value"], "final_step": result.steps}
            else:
                selection = {"step": result.steps, "metric": None, "value": None, "final_step": result.steps,
                             "note": "no validation split: final weights"}
            (out_dir / SELECTION_FILE).write_text(json.dumps(selection, indent=2) + "\n", encoding="utf-8")
            summary["selection"] = selection
            summary["val_best"] = next((r for r in val_records if r["step"] == best.get("step")), {})
        run.train_records = read_jsonl(run_dir / METRICS_FILE)
        run.val_records = val_records
        summary["val"] = {k: v for k, v in val_records[-1].items() if k != "split"} if val_records else {}
        summary["final_losses"] = losses_of(run.train_records[-1] if run.train_records else {})
        rates = [r.get("samples_per_s") for r in run.train_records if r.get("samples_per_s")]
        if rates:
            summary["samples_per_s"] = float(np.median(rates))
    summary.update(recipe.summary(run))
    if rank == 0:
        # A selecting recipe's panel is titled with the figure it selects on, the selected step marked.
        titles = {SELECTED_ON: f"val {recipe.select_on} (selects the model)"} if selects else {}
        selected = summary["selection"]["step"] if selects and best else None
        write_finished(model, config, out_dir, run.train_records, val_records, val_keys=recipe.plot_val_keys,
                       pretrained=recipe.pretrained_info(train_ds), val_titles=titles, selected_step=selected)
    return summary


# ---------------------------------------------------------------------------------------------
# The parts of a fit
# ---------------------------------------------------------------------------------------------


def ensure_distributed(world_size: int) -> None:
    """Start the process group early (the tokenizer step needs a barrier) when several ranks run."""
    if world_size > 1:
        from .engine import init_distributed

        init_distributed()


def barrier(world_size: int) -> None:
    if world_size > 1:
        import deepspeed.comm as dist

        dist.barrier()


def subset_samples(samples: list, limit: int) -> list:
    """The first ``limit`` samples (the example lists each twin right after its base); 0 = all."""
    if not limit or len(samples) <= limit:
        return samples
    return samples[:limit]


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
    resumed = resume is not None and (out_tok / "tokenizer_config.json").is_file()
    # Every rank looks before rank 0 may write this run's tokenizer, so they all take the same
    # branch (a rank that saw rank 0's fresh tokenizer as a resumed one skipped the barrier below).
    barrier(world_size)
    if resumed:
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
        barrier(world_size)
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


def batch_source(trainer, dataset, train_cfg, workers: int, val_every: int, validate):
    """``batches(epoch, start)`` for ``Trainer.train`` over ``dataset`` on this rank, calling
    ``validate(step)`` every ``val_every`` optimizer steps, between steps (before the next
    micro-batch is used)."""
    import torch

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
    path.write_text("".join(json.dumps(json_clean(r)) + "\n" for r in records), encoding="utf-8")
    return True


def json_clean(record: dict) -> dict:
    """``record`` with NaN/Inf floats as None (JSON has neither)."""
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def losses_of(record: dict) -> dict[str, float]:
    """A training record's loss terms, without the ``loss/`` prefix."""
    return {k[len("loss/"):]: v for k, v in record.items() if k.startswith("loss/")}


def write_finished(
    model, config, out_dir: Path, train_records: list[dict], val_records: list[dict], val_keys: tuple[str, ...] = ("R@1", "loss/total"),
    pretrained: Optional[dict] = None, val_titles: Optional[dict[str, str]] = None, selected_step: Optional[int] = None,
) -> None:
    """config.json, model.safetensors, metrics.jsonl and loss.png (the tokenizer is already there);
    ``val_keys``: the validation figures drawn beside the training losses (``val_titles``: a
    panel's title other than ``val <key>``); ``selected_step``: the step whose weights were kept,
    marked on every panel; ``pretrained``: what config.json records besides the config
    (``Recipe.pretrained_info``)."""
    save_pretrained(model, config, out_dir, **(pretrained or {}))
    with open(out_dir / METRICS_FILE, "w", encoding="utf-8") as f:
        for record in train_records:
            f.write(json.dumps({"split": "train", **record}) + "\n")
        for record in val_records:
            f.write(json.dumps(json_clean(record)) + "\n")
    series: dict[str, tuple[list, list]] = {}
    for key in sorted({k for r in train_records for k in r if k.startswith("loss/")}, key=lambda k: (k != "loss/total", k)):
        pts = [(r["step"], r[key]) for r in train_records if r.get(key) is not None]
        series[f"train {key}"] = ([p[0] for p in pts], [p[1] for p in pts])
    for key in val_keys:
        pts = [(r["step"], r[key]) for r in val_records if isinstance(r.get(key), (int, float))]
        if pts:
            series[(val_titles or {}).get(key, f"val {key}")] = ([p[0] for p in pts], [p[1] for p in pts])
    from ..plots import plot_curves

    plot_curves(series, out_dir / PLOT_FILE, mark=(selected_step, f"selected: step {selected_step}") if selected_step is not None else None)
