"""What one kind of training is: the ``Recipe`` that ``fit`` (train/fit.py) runs.

A recipe names everything a pre-training stage (train/pretrain.py, docs/method.md §4–§5) or a
downstream fine-tune (train/finetune.py, docs/method.md §6) does differently; the fit loop does
the rest (process group, splits, tokenizer, trainer, validation schedule and records, checkpoint
selection, the finished model). ``fit`` calls the hooks in this order, which is also the order of
every random draw (the model's initialisation is seeded inside ``build_model``):

    check()                                   the arguments, before any work
    prepare(corpus_path, train_samples)       what the corpus adds (e.g. the answer vocabulary)
    tokenizer_texts(train_samples)            only when a fresh tokenizer is trained
    model_config(tokenizer) -> config         the model variant's LfvilaConfig
    datasets(tokenizer, train_samples, val_samples) -> (train, val or None)
    check_data(train_ds, config, corpus_path)   then fit's check: at least one full step per epoch
    build_model(config) -> model              torch.manual_seed(cfg.train.seed), build, load the init artifact
    set_trainable(model) -> trainable parameter count
    loss(engine, batch, step) -> {"total": (), term: (), ...}      each micro-batch
    baseline(model, val_ds, rank, world_size) -> metrics or None   a fresh run, before training
    predict(module, val_ds, rank, world_size)                      every validating rank
    score(predicted) -> record fields                              rank 0
    summary(run) -> the recipe's own summary fields
    pretrained_info(train_ds) -> what config.json records besides the config     rank 0, at the end

``cfg`` carries the fields every recipe config has: ``train`` (TrainConfig), ``tokenizer``,
``tokenizer_vocab_size``, ``val_every``, ``val_max_samples``, ``val_batch`` and ``workers``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

SELECTED_ON = "selected_on"  # the record field holding the figure a selecting recipe maximises


class Recipe(ABC):
    """One training recipe; subclasses fill in the hooks (see the module docstring)."""

    cfg: Any
    init_from: Optional[Path] = None
    entry = "fit"  # the function the user called, in messages
    purpose = "train on"  # "no train-split samples to <purpose>"
    # The message when the tokenizer must be named or come with ``init_from`` (None: train one).
    tokenizer_required: Optional[str] = None
    # The validation figure whose best value selects the finished weights (``score`` returns it
    # as ``SELECTED_ON``), e.g. "accuracy"; None: the final weights, no selection.
    select_on: Optional[str] = None
    validate_on_rank0_only = False  # else every rank predicts its share (all must call)
    plot_val_keys: tuple[str, ...] = ("R@1", "loss/total")  # validation figures drawn beside the losses
    tokenizer: Any = None  # set by fit once resolved

    def check(self) -> None:
        """Argument checks before any work."""

    def prepare(self, corpus_path: Path, train_samples: list) -> None:
        """Read what the recipe needs from the corpus besides the samples."""

    def tokenizer_texts(self, train_samples: list) -> list[str]:
        return [seg.text for s in train_samples for seg in s.segments]

    @abstractmethod
    def datasets(self, tokenizer, train_samples: list, val_samples: list) -> tuple[Any, Any]:
        """(train dataset, val dataset or None)."""

    @abstractmethod
    def model_config(self, tokenizer):
        """The model variant's LfvilaConfig (the tokenizer may size its vocabulary)."""

    def check_data(self, train_ds, config, corpus_path: Path) -> None:
        """Refuse training data the model cannot take."""

    @abstractmethod
    def build_model(self, config):
        """The model under ``torch.manual_seed(cfg.train.seed)``, loaded from the init artifact if any."""

    @abstractmethod
    def set_trainable(self, model) -> int:
        """Freeze what the recipe does not train; the trainable parameter count."""

    @abstractmethod
    def loss(self, engine, batch: dict, step: int) -> dict:
        """One micro-batch's loss terms, ``"total"`` included, through the engine's forward."""

    def baseline(self, model, val_ds, rank: int, world_size: int) -> Optional[dict]:
        """Validation figures of the untrained model (a fresh run with a val split), or None."""
        return None

    @abstractmethod
    def predict(self, module, val_ds, rank: int, world_size: int) -> Any:
        """This rank's validation predictions (or figures), which ``score`` turns into a record."""

    def score(self, predicted) -> dict[str, Any]:
        """The validation record's figures (rank 0); ``SELECTED_ON`` first when the recipe selects."""
        return dict(predicted)

    def summary(self, run) -> dict[str, Any]:
        """The recipe's own summary fields (``run``: fit.FitRun)."""
        return {}

    def pretrained_info(self, train_ds) -> dict[str, Any]:
        """What the finished model's config.json records besides its config (the keyword
        arguments of ``model.pretrained.save_pretrained``): the preprocessing it was trained with
        (normalisation, tokens per sentence, frames and frame size of an item)."""
        loader = self.cfg.loader
        return {"preprocessing": {
            "image_mean": list(loader.image_mean), "image_std": list(loader.image_std), "max_tokens": loader.max_tokens,
            "frames": train_ds.frames_per_item, "height": train_ds.height, "width": train_ds.width,
        }}


def move_batch(batch: dict, param) -> tuple:
    """(frames, input_ids, attention_mask) of a micro-batch on ``param``'s device; frames in its
    dtype. A batch of cached features gives its ``video_tokens`` in the frames' place."""
    frames = batch["frames" if "frames" in batch else "video_tokens"].to(device=param.device, dtype=param.dtype)
    return frames, batch["input_ids"].to(param.device), batch["attention_mask"].to(param.device)
