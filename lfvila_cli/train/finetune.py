"""The body of ``lfvila finetune --task ...`` (docs/method.md §6) as a library function.

``run_finetune(cfg, corpus_path, store_url, out_dir, init_from=..., answers=..., ...)`` fine-tunes
one downstream task on the corpus' train split with the pre-training trainer (DeepSpeed,
checkpoints, resume), validates on the val split every ``val_every`` steps and at the end, and
writes the model that scored best on **validation** (never test; docs/method.md §7):

    out_dir/config.json, model.safetensors, tokenizer/   the selected model
    out_dir/metrics.jsonl, loss.png                      training and validation records
    out_dir/selection.json                               which step was selected, on what figure
    out_dir/run/                                         the trainer's run directory; run/best/ the best weights so far

Tasks and heads:

* retrieval (``activitynet``, ``didemo``, ``queryd``, ``cmd``): the dual encoder (video encoder,
  text layers 0–11, global projections) trained with VPC only; selected on val text→video R@1.
* ``how2qa``: the cross-modal model, one logit per candidate, cross-entropy over the 4, plus
  ``span_weight`` × the class-balanced per-frame span loss; selected on val accuracy.
* ``violin`` (2 labels) and ``anet-qa`` (the prepare artifact's ``answers.json``, 1654 answers
  in the paper): a classifier on the pooled token; selected on val accuracy.

Initialisation (``init``): ``pretrained`` — the pipeline's pre-training artifact (stage 1 for
retrieval, stage 2 for QA, ``init_from``), its tokenizer and architecture; ``scratch`` — the
``model`` preset with random weights and a tokenizer trained on the task's train texts (the
"without pre-training" baseline); ``release`` — the authors' released checkpoint file
``release_checkpoint`` through the importer (``model.weights``), with the ``model`` preset's
architecture and the ``tokenizer`` named (their vocabulary: ``bert-base-uncased``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

from ..config import check
from ..data.corpus import read_split
from ..data.loader import LoaderConfig
from ..data.task_data import check_fit
from ..errors import ConfigError, DataError, LfvilaError
from ..model.pretrained import TOKENIZER_DIR, WEIGHTS_FILE, float_state, load_pretrained_into, load_weights, read_config, save_weights
from ..tasks import TaskSpec, read_answers, task_spec
from .engine import TrainConfig
from .pretrain import (
    _barrier,
    _ensure_distributed,
    _json_clean,
    _move,
    _read_jsonl,
    _subset_samples,
    _write_finished,
    batch_source,
    drop_records_from,
    resolve_tokenizer,
)

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"


def _finetune_train() -> TrainConfig:
    # The tiny model on the bundled example, on a CPU; docs/method.md §6 (lr 5e-5, 20/30/100 epochs) is the
    # paper recipe in stages/paper/.
    return TrainConfig(lr=2e-4, micro_batch=16, epochs=10, precision="fp32", checkpoint_every=200, warmup_steps=10)


@dataclass
class FinetuneConfig:
    task: str = "activitynet"  # activitynet | didemo | queryd | cmd | how2qa | violin | anet-qa
    init: Literal["pretrained", "scratch", "release"] = "pretrained"
    release_checkpoint: str = ""  # init=release: the authors' checkpoint file (.pt / .bin / .safetensors)
    model: str = "lfvila-tiny"  # preset for init=scratch|release (init=pretrained: the artifact's architecture)
    text_model: str = "random"  # init=scratch|release: as in pretrain
    tokenizer: str = ""  # "" = the pre-trained model's (init=pretrained) or one trained on the train texts (scratch)
    tokenizer_vocab_size: int = 2000
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(max_tokens=32))
    max_subtitles: int = -1  # subtitle slots after the question / statement; -1 = the task's (How2QA 6, VIOLIN 4)
    span_weight: float = 1.0  # How2QA: weight of the per-frame span loss
    train: TrainConfig = field(default_factory=_finetune_train)
    val_every: int = 50  # steps; 0 = only at the end
    val_max_samples: int = 0  # 0 = the whole val split
    val_batch: int = 8
    workers: int = 1

    def __post_init__(self) -> None:
        task_spec(self.task)
        check(self.init in ("pretrained", "scratch", "release"), "init", f"expected pretrained, scratch or release, got {self.init!r}")
        check(self.init != "release" or bool(self.release_checkpoint), "release_checkpoint", "init=release needs the checkpoint file")
        check(self.max_subtitles >= -1, "max_subtitles", f"must be >= -1 (-1 = the task's), got {self.max_subtitles}")
        check(self.span_weight >= 0, "span_weight", f"must be >= 0, got {self.span_weight}")
        check(self.tokenizer_vocab_size > 5, "tokenizer_vocab_size", f"must be > 5, got {self.tokenizer_vocab_size}")
        check(self.val_every >= 0, "val_every", f"must be >= 0, got {self.val_every}")
        check(self.val_max_samples >= 0, "val_max_samples", f"must be >= 0, got {self.val_max_samples}")
        check(self.val_batch >= 1, "val_batch", f"must be >= 1, got {self.val_batch}")
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")

    @property
    def spec(self) -> TaskSpec:
        return task_spec(self.task)

    @property
    def subtitles(self) -> int:
        return self.spec.max_subtitles if self.max_subtitles < 0 else self.max_subtitles


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------


def build_task_model(cfg: FinetuneConfig, init_from: Optional[Path], tokenizer, num_labels: Optional[int]):
    """(model, config, init report) for ``cfg.task``."""
    from ..model.lfvila import build_model
    from ..model.presets import derive_variant, get_preset

    spec = cfg.spec
    labels = num_labels if spec.variant == "qa-classification" else None
    release_state = None
    if cfg.init == "release":
        from ..model.weights import read_state_dict

        release_state, _ = read_state_dict(cfg.release_checkpoint)  # read once: sized from, then loaded
    if cfg.init == "pretrained":
        config = derive_variant(read_config(init_from), spec.variant, labels)
    else:
        config = get_preset(cfg.model, spec.variant, num_labels=labels, text_model=cfg.text_model)
        if config.text.bert_config is not None and cfg.init == "scratch":
            # As in pre-training: a random BERT takes the tokenizer's vocabulary.
            config.text.bert_config = {**config.text.bert_config, "vocab_size": len(tokenizer)}
        if config.text.bert_config is not None and cfg.init == "release":
            # A random BERT takes the checkpoint's vocabulary (bert-base-uncased's 30522 rows in the
            # authors' files); a file without word embeddings fails the import check below.
            table = release_state.get("text_encoder.bert.embeddings.word_embeddings.weight")
            if table is not None:
                config.text.bert_config = {**config.text.bert_config, "vocab_size": int(table.shape[0])}
    if cfg.loader.max_tokens > config.text.max_tokens:
        raise ConfigError(f"config key 'loader.max_tokens': {cfg.loader.max_tokens} exceeds the model's {config.text.max_tokens} tokens per sentence")
    torch.manual_seed(cfg.train.seed)
    model = build_model(config)
    rows = model.text_encoder.word_embeddings.num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"config key 'tokenizer': {len(tokenizer)} tokens, but the model has {rows} embedding rows")
    if cfg.init == "pretrained":
        report = {"from": str(init_from), **load_pretrained_into(model, init_from)}
    elif cfg.init == "release":
        from ..model.weights import load_official_checkpoint

        imported = load_official_checkpoint(model, release_state, label=str(cfg.release_checkpoint))
        # Only the task's new head may be absent (a stage-2 file for a QA task); anything else
        # missing means a file of another layout (e.g. a retrieval file for a QA task).
        try:
            imported.check(allow_missing=[r"^(multiple_choice_head|classification_head)\."])
        except LfvilaError as exc:
            raise type(exc)(f"{exc} (task {cfg.task} takes a {spec.variant} or stage-{spec.pretrained_stage[-1]} checkpoint)") from None
        report = {"from": cfg.release_checkpoint, "summary": imported.summary()}
    else:
        report = {"from": "scratch"}
    return model, config, report


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


def task_loss(model_call, param: torch.Tensor, batch: dict, kind: str, temperature: float, span_weight: float) -> dict[str, torch.Tensor]:
    """The task's loss terms for one micro-batch (``"total"`` included)."""
    from ..objectives import classification_loss, multiple_choice_loss, retrieval_loss

    frames, ids, mask = _move(batch, param)
    out = model_call(frames, ids, mask)
    if kind == "retrieval":
        return retrieval_loss(out, temperature)
    labels = batch["label"].to(param.device)
    if kind == "multiple_choice":
        return multiple_choice_loss(out, labels, batch["span_labels"].to(param.device), span_weight)
    return classification_loss(out.logits, labels)


def selection_metric(kind: str, metrics: dict) -> float:
    """The validation figure a task is selected on: text→video R@1, or accuracy."""
    return float(metrics["text_to_video"]["R@1"] if kind == "retrieval" else metrics["accuracy"])


def _flat(metrics: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------


def run_finetune(
    cfg: FinetuneConfig,
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
    """Fine-tune ``cfg.task`` and write the validation-selected model into ``out_dir`` (see the
    module docstring). Returns a JSON-able summary."""
    from ..data.task_data import TaskDataset
    from ..evaluation import predict_task, task_metrics
    from ..model.lfvila import count_parameters
    from .engine import Trainer

    corpus_path, out_dir = Path(corpus_path), Path(out_dir)
    spec = cfg.spec
    if cfg.init == "pretrained":
        if init_from is None or not (Path(init_from) / WEIGHTS_FILE).is_file():
            raise LfvilaError(
                f"finetune --task {cfg.task} starts from a finished {spec.pretrained_stage} artifact (no {WEIGHTS_FILE} in {init_from}); "
                "or set init=scratch"
            )
        init_from = Path(init_from)
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / "run"
    best_dir = run_dir / "best"

    _ensure_distributed(world_size)
    train_samples = read_split(corpus_path, "train")
    val_samples = _subset_samples(read_split(corpus_path, "val"), cfg.val_max_samples)
    if not train_samples:
        raise DataError(f"{corpus_path}: no train-split samples to fine-tune on")
    num_labels = None
    if spec.kind == "classification":
        num_labels = spec.num_labels or len(read_answers(corpus_path.parent))

    def texts() -> list[str]:
        out = [seg.text for s in train_samples for seg in s.segments]
        for s in train_samples:
            out += [str(s.task.get(k)) for k in ("question", "statement") if s.task.get(k)]
            out += [str(c) for c in s.task.get("candidates") or []]
            out += [str(sub.get("text", "")) for sub in s.task.get("subtitles") or []]
        return out

    tokenizer = resolve_tokenizer(
        cfg.tokenizer, cfg.tokenizer_vocab_size, texts, init_from, out_dir / TOKENIZER_DIR, rank, world_size, resume,
        missing_message="config key 'tokenizer': init=release needs the tokenizer the checkpoint was trained with (bert-base-uncased)"
        if cfg.init == "release" else None,
    )
    model, config, init_report = build_task_model(cfg, init_from, tokenizer, num_labels)

    def dataset(samples, train: bool):
        return TaskDataset(
            samples, store_url, tokenizer, spec.kind, cfg.loader, train=train, max_subtitles=cfg.subtitles, num_labels=num_labels,
        )

    train_ds = dataset(train_samples, True)
    val_ds = dataset(val_samples, False) if val_samples else None
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None
    check_fit(train_ds, config, f"{corpus_path} (train split)")
    steps_per_epoch = len(train_ds) // world_size // cfg.train.micro_batch // cfg.train.grad_accum
    if steps_per_epoch < 1:
        raise DataError(
            f"{corpus_path}: {len(train_ds)} usable train samples make no full step of "
            f"{cfg.train.micro_batch} × {cfg.train.grad_accum} × {world_size} ranks (lower train.micro_batch)"
        )
    trainable = model.set_trainable("finetune")
    temperature = config.objectives.temperature

    def loss_fn(engine, batch, step):
        return task_loss(engine, next(engine.module.parameters()), batch, spec.kind, temperature, cfg.span_weight)

    trainer = Trainer(model, loss_fn, cfg.train, run_dir)
    if not progress:
        trainer._progress = lambda total: None
    val_records: list[dict] = []
    val_path = run_dir / "val_metrics.jsonl"
    best_path = run_dir / "best.json"
    best: dict[str, Any] = json.loads(best_path.read_text()) if resume is not None and best_path.is_file() else {}

    validated: set[int] = set()  # steps validated by this process

    def validate(step: int) -> None:
        # Every rank predicts its share of the val split (all must call); rank 0 scores it, keeps
        # the records and saves the best weights.
        if val_ds is None or step in validated:
            return
        validated.add(step)
        t0 = time.perf_counter()
        module = trainer.engine.module
        with torch.random.fork_rng(devices=[]):
            predicted = predict_task(module, val_ds, cfg.val_batch, rank=rank, world_size=world_size)
        if rank != 0:
            return
        if drop_records_from(val_records, step, val_path) and best and best["step"] >= step:
            best.clear()  # the best of an earlier attempt's dropped records
        metrics = task_metrics(spec.kind, predicted)
        value = selection_metric(spec.kind, metrics)
        record = {"step": step, "split": "val", "selected_on": value, **_flat(metrics), "seconds": time.perf_counter() - t0}
        val_records.append(record)
        with open(val_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_json_clean(record)) + "\n")
        if not best or value > best["value"]:
            # Weights first, then the record that names them: a crash between leaves the old record
            # pointing at newer weights of a better step, never at missing ones.
            best_dir.mkdir(parents=True, exist_ok=True)
            save_weights(float_state(module), best_dir / (WEIGHTS_FILE + ".tmp"))
            os.replace(best_dir / (WEIGHTS_FILE + ".tmp"), best_dir / WEIGHTS_FILE)  # a kill never leaves half a file
            best.clear()
            best.update({"step": step, "value": value})
            best_path.write_text(json.dumps(best) + "\n")
        log.info("val at step %d: %s = %.4f (best %.4f at step %d)", step, _metric_name(spec.kind), value, best["value"], best["step"])

    if rank == 0 and resume is None:
        for path in (val_path, best_path):
            path.unlink(missing_ok=True)
    if rank == 0 and resume is not None and val_path.exists():
        val_records.extend(json.loads(line) for line in val_path.read_text(encoding="utf-8").splitlines() if line.strip())
    batches = batch_source(trainer, train_ds, cfg.train, cfg.workers, cfg.val_every, validate)
    result = trainer.train(batches, steps_per_epoch, resume=resume)
    validate(result.steps)
    _barrier(world_size)

    summary: dict[str, Any] = {
        "task": cfg.task,
        "kind": spec.kind,
        "init": init_report,
        "steps": result.steps,
        "skipped_steps": result.bad_steps,
        "train_samples": len(train_ds),
        "val_samples": len(val_ds) if val_ds is not None else 0,
        "skipped_samples": {"train": dict(train_ds.skipped), "val": dict(val_ds.skipped) if val_ds is not None else {}},
        "trainable_parameters": trainable,
        "parameters": count_parameters(model),
        "seconds": time.perf_counter() - started,
    }
    if num_labels is not None:
        summary["num_labels"] = num_labels
    if rank == 0:
        if best:
            model.load_state_dict(load_weights(best_dir / WEIGHTS_FILE), strict=True)
            selection = {"step": best["step"], "metric": f"val {_metric_name(spec.kind)}", "value": best["value"], "final_step": result.steps}
        else:
            selection = {"step": result.steps, "metric": None, "value": None, "final_step": result.steps, "note": "no validation split: final weights"}
        (out_dir / SELECTION_FILE).write_text(json.dumps(selection, indent=2) + "\n", encoding="utf-8")
        summary["selection"] = selection
        summary["val"] = {k: v for k, v in val_records[-1].items() if k != "split"} if val_records else {}
        summary["val_best"] = next((r for r in val_records if r["step"] == best.get("step")), {})
        train_records = _read_jsonl(run_dir / "metrics.jsonl")
        summary["final_losses"] = {k[len("loss/"):]: v for k, v in (train_records[-1] if train_records else {}).items() if k.startswith("loss/")}
        rates = [r.get("samples_per_s") for r in train_records if r.get("samples_per_s")]
        if rates:
            summary["samples_per_s"] = float(np.median(rates))
        _write_finished(model, config, out_dir, train_records, val_records, val_keys=("selected_on",))
    return summary


def _metric_name(kind: str) -> str:
    return "text-to-video R@1" if kind == "retrieval" else "accuracy"
