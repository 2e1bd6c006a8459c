"""Fine-tuning the downstream tasks (docs/method.md §6): ``lfvila finetune --task ...`` as a library function.

``run_finetune(cfg, corpus_path, store_url, out_dir, init_from=..., rank=..., world_size=...,
progress=..., resume=...)`` builds the ``FinetuneRecipe`` of ``cfg.task`` and runs it with ``fit``
(train/fit.py): training on the corpus' train split with the pre-training trainer (DeepSpeed,
checkpoints, resume), validation on the val split every ``val_every`` steps and at the end, and
the model that scored best on **validation** (never test; docs/method.md §7) in ``out_dir``:

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
* the generic tasks of your own corpora (``tasks.py``): ``retrieval`` as the retrieval
  benchmarks; ``multiple-choice`` as How2QA with the items' own number of candidates (the span
  loss where items give a ``span``); ``classification`` with the corpus' classes (``class_count``).

Every rank predicts its share of the val split; rank 0 scores it.

Initialisation (``init``): ``pretrained`` — the pipeline's pre-training artifact (stage 1 for
retrieval, stage 2 for QA, ``init_from``), its tokenizer and architecture; ``scratch`` — the
``model`` preset with random weights and a tokenizer trained on the task's train texts (the
"without pre-training" baseline); ``release`` — the authors' released checkpoint file
``release_checkpoint`` through the importer (``model.weights``), with the ``model`` preset's
architecture and the ``tokenizer`` named (their vocabulary: ``bert-base-uncased``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..data.formats.anetqa import ANSWERS_FILE
from ..data.task_data import check_fit
from ..errors import ConfigError, LfvilaError
from ..model.pretrained import WEIGHTS_FILE, load_pretrained_into, read_config
from ..tasks import candidate_count, class_count, read_answers
from .config import FinetuneConfig
from .fit import fit
from .recipe import SELECTED_ON, Recipe, move_batch


# ---------------------------------------------------------------------------------------------
# Model construction
# ---------------------------------------------------------------------------------------------


def task_model_config(cfg: FinetuneConfig, init_from: Optional[Path], tokenizer, num_labels: Optional[int]):
    """(config, the release checkpoint's state dict or None) of ``cfg.task``'s model: the
    pre-trained artifact's architecture (init=pretrained) or the ``model`` preset's."""
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
    return config, release_state


def init_task_model(cfg: FinetuneConfig, config, init_from: Optional[Path], tokenizer, release_state=None):
    """(model, init report): ``config``'s model built under ``cfg.train.seed`` and initialised as
    ``cfg.init`` says (the pre-trained artifact, the release state dict, or nothing: scratch)."""
    from ..model.lfvila import build_model

    spec = cfg.spec
    torch.manual_seed(cfg.train.seed)
    model = build_model(config)
    rows = model.text_encoder.word_embeddings.num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"config key 'tokenizer': {len(tokenizer)} tokens, but the model has {rows} embedding rows")
    if cfg.init == "pretrained":
        report = {"from": str(init_from), **load_pretrained_into(model, init_from, choice_head_vtm=cfg.choice_head_init == "vtm")}
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
    if cfg.choice_head_init == "vtm" and cfg.init != "pretrained":
        report["choice_head"] = f"fresh (init={cfg.init}: vtm applies to a pre-trained artifact)"
    return model, report


def build_task_model(cfg: FinetuneConfig, init_from: Optional[Path], tokenizer, num_labels: Optional[int]):
    """(model, config, init report) for ``cfg.task``."""
    config, release_state = task_model_config(cfg, init_from, tokenizer, num_labels)
    model, report = init_task_model(cfg, config, init_from, tokenizer, release_state)
    return model, config, report


# ---------------------------------------------------------------------------------------------
# Losses and selection
# ---------------------------------------------------------------------------------------------


def task_loss(model_call, param: torch.Tensor, batch: dict, kind: str, temperature: float, span_weight: float) -> dict[str, torch.Tensor]:
    """The task's loss terms for one micro-batch (``"total"`` included)."""
    from ..objectives import classification_loss, multiple_choice_loss, retrieval_loss

    frames, ids, mask = move_batch(batch, param)
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


def metric_name(kind: str) -> str:
    """The name of ``selection_metric``'s figure."""
    return "text-to-video R@1" if kind == "retrieval" else "accuracy"


def _flat(metrics: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


class FinetuneRecipe(Recipe):
    """Fine-tuning ``cfg.task``: the task's model variant initialised as ``cfg.init`` says, its
    loss, val predictions scored by ``task_metrics``; selected on ``selection_metric``."""

    entry = "run_finetune"
    purpose = "fine-tune on"
    plot_val_keys = (SELECTED_ON,)

    def __init__(self, cfg: FinetuneConfig, corpus_path: Path, store_url: str, init_from: Optional[Path]) -> None:
        self.cfg = cfg
        self.spec = cfg.spec
        self.corpus_path = Path(corpus_path)
        self.store_url = store_url
        self.init_from = init_from
        self.select_on = metric_name(self.spec.kind)
        if cfg.init == "release":
            self.tokenizer_required = "config key 'tokenizer': init=release needs the tokenizer the checkpoint was trained with (bert-base-uncased)"
        self.num_labels: Optional[int] = None
        self.num_candidates = 4
        self.release_state = None
        self.init_report: Optional[dict] = None
        self.temperature: Optional[float] = None

    def check(self) -> None:
        cfg, init_from = self.cfg, self.init_from
        if cfg.init == "pretrained":
            if init_from is None or not (Path(init_from) / WEIGHTS_FILE).is_file():
                raise LfvilaError(
                    f"finetune --task {cfg.task} starts from a finished {self.spec.pretrained_stage} artifact (no {WEIGHTS_FILE} in {init_from}); "
                    "or set init=scratch"
                )
            self.init_from = Path(init_from)

    def prepare(self, corpus_path, train_samples) -> None:
        if self.spec.kind == "classification":
            if self.spec.num_labels:
                self.num_labels = self.spec.num_labels
            elif self.spec.benchmark:
                self.num_labels = len(read_answers(Path(corpus_path).parent))
            else:
                from ..data.corpus import read_corpus

                self.num_labels = class_count(corpus_path, read_corpus(corpus_path))
        if self.spec.kind == "multiple_choice":
            self.num_candidates = self.spec.num_candidates or candidate_count(train_samples)

    def tokenizer_texts(self, train_samples) -> list[str]:
        out = super().tokenizer_texts(train_samples)
        for s in train_samples:
            out += [str(s.task.get(k)) for k in ("question", "statement") if s.task.get(k)]
            out += [str(c) for c in s.task.get("candidates") or []]
            out += [str(sub.get("text", "")) for sub in s.task.get("subtitles") or []]
        return out

    def datasets(self, tokenizer, train_samples, val_samples):
        from ..data.task_data import TaskDataset

        def dataset(samples, train: bool):
            return TaskDataset(
                samples, self.store_url, tokenizer, self.spec.kind, self.cfg.loader, train=train,
                max_subtitles=self.cfg.subtitles, num_labels=self.num_labels, num_candidates=self.num_candidates,
            )

        return dataset(train_samples, True), (dataset(val_samples, False) if val_samples else None)

    def model_config(self, tokenizer):
        config, self.release_state = task_model_config(self.cfg, self.init_from, tokenizer, self.num_labels)
        self.temperature = config.objectives.temperature
        return config

    def check_data(self, train_ds, config, corpus_path) -> None:
        check_fit(train_ds, config, f"{corpus_path} (train split)")

    def build_model(self, config):
        model, self.init_report = init_task_model(self.cfg, config, self.init_from, self.tokenizer, self.release_state)
        self.release_state = None  # loaded: no need to hold a second copy
        return model

    def set_trainable(self, model) -> int:
        return model.set_trainable("finetune")

    def loss(self, engine, batch, step):
        return task_loss(engine, next(engine.module.parameters()), batch, self.spec.kind, self.temperature, self.cfg.span_weight)

    def predict(self, module, val_ds, rank, world_size):
        from ..evaluation import predict_task

        return predict_task(module, val_ds, self.cfg.val_batch, rank=rank, world_size=world_size)

    def score(self, predicted) -> dict[str, Any]:
        from ..evaluation import task_metrics

        metrics = task_metrics(self.spec.kind, predicted)
        return {SELECTED_ON: selection_metric(self.spec.kind, metrics), **_flat(metrics)}

    def pretrained_info(self, train_ds) -> dict[str, Any]:
        """The preprocessing, the task and a classifier's classes where the corpus names them
        (its ``answers.json``)."""
        info = {**super().pretrained_info(train_ds), "task": self.cfg.task}
        if self.spec.kind == "classification" and (self.corpus_path.parent / ANSWERS_FILE).is_file():
            info["labels"] = read_answers(self.corpus_path.parent)
        return info

    def summary(self, run) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.cfg.task, "kind": self.spec.kind, "init": self.init_report}
        if self.num_labels is not None:
            out["num_labels"] = self.num_labels
        if self.spec.kind == "multiple_choice":
            out["num_candidates"] = self.num_candidates
        return out


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
    module docstring and train/fit.py). Returns a JSON-able summary."""
    recipe = FinetuneRecipe(cfg, corpus_path, store_url, init_from)
    return fit(recipe, corpus_path, out_dir, rank=rank, world_size=world_size, progress=progress, resume=resume)
