"""Pre-training stages 1 and 2 (docs/method.md §4, §5): ``lfvila pretrain --stage 1|2`` as a library function.

``run_pretrain(cfg, corpus_path, store_url, out_dir, init_from=..., rank=..., world_size=...,
progress=..., resume=...)`` builds the ``PretrainRecipe`` of ``cfg.stage`` and runs it with
``fit`` (train/fit.py): training over the corpus' train split, validation on its val split every
``cfg.val_every`` steps and at the end, and the finished model in ``out_dir`` (config.json,
model.safetensors, tokenizer/, metrics.jsonl, loss.png, run/). No checkpoint selection: the
final weights are the model.

Stage 1 trains the video encoder, text layers 0–11 and the projections on VPC + MTC; its video
encoder starts from random weights, or with ``video_init`` set from a Swin-2D checkpoint inflated to
3-D (docs/method.md §2: Swin-B 22k 384 for the base preset; ``model.weights.load_swin2d``). Every
rank embeds its share of the val split (R@1, temporal-order accuracy), and a fresh run records the
untrained model's figures first ("val_untrained"). Stage 2 starts from a stage-1 artifact
(``init_from``): its weights are loaded strictly into every part that a stage-1 model has,
everything from stage 1 is frozen, and layers 12–23, the video token embedding and the MLM/VTM
heads train on MLM + VTM; rank 0 alone validates (MLM and VTM accuracy). Stage 2 reuses the
stage-1 tokenizer unless one is named. With ``features`` (a feature store of ``lfvila features``,
train/features.py) stage 2 reads the frozen video encoder's output instead of computing it
(docs/method.md §8); without, it runs the encoder on every batch, the reference path.

Every random draw of a loss (the MTC plan, MLM masking, VTM pairing) comes from a generator seeded
by ``(objectives.seed, step)``: the same on every rank and after a resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError, LfvilaError
from ..model.pretrained import WEIGHTS_FILE, load_stage1_into
from .config import _VIDEO_INIT_STAGE1_ONLY, PretrainConfig
from .fit import fit, losses_of
from .recipe import Recipe, move_batch

_STAGE2_STREAM = 2  # keeps stage-2 draws apart from stage-1 draws at the same step


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
# Losses and stage-2 validation
# ---------------------------------------------------------------------------------------------


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """One generator per (seed, step, stream): identical on every rank and after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


def stage1_loss(model_call, model, batch: dict, step: int, objectives) -> dict[str, torch.Tensor]:
    frames, ids, mask = move_batch(batch, next(model.parameters()))
    out = model_call(frames, ids, mask)
    from ..objectives import pretrain_stage1_loss

    gen = step_generator(objectives.seed, step)
    return pretrain_stage1_loss(out.video_embedding, out.paragraph_embedding, out.sentence_embeddings, out.clip_embeddings, gen, objectives)


def stage2_loss(
    model_call, model, batch: dict, step: int, objectives, tokenizer, with_accuracy: bool = False,
    score_every_token: bool = False,
) -> dict[str, torch.Tensor]:
    """Stage 2's losses of a batch. The MLM head scores only the tokens MLM is trained on;
    ``score_every_token`` scores all of them, the reference (docs/engineering.md §3)."""
    from ..objectives import draw_stage2_targets, stage2_mlm_positions, stage2_output_loss

    video, ids, mask = move_batch(batch, next(model.parameters()))
    gen = step_generator(objectives.seed, step, _STAGE2_STREAM)
    targets = draw_stage2_targets(ids, mask, tokenizer.all_special_ids, len(tokenizer), tokenizer.mask_token_id, gen, objectives)
    positions = None if score_every_token else stage2_mlm_positions(targets)
    if "video_tokens" in batch:  # cached features: the frozen video encoder already ran (docs/method.md §8)
        out = model_call(
            None, targets.input_ids, targets.attention_mask, video_index=targets.video_index, mlm_positions=positions, video_tokens=video,
        )
    else:
        out = model_call(video, targets.input_ids, targets.attention_mask, video_index=targets.video_index, mlm_positions=positions)
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
            if batch["input_ids"].shape[0] < 2:
                continue  # VTM needs two samples to mismatch
            terms = stage2_loss(model, model, batch, 10**6 + i, objectives, tokenizer, with_accuracy=True)
            for k in sums:
                sums[k] += float(terms[k])
            correct += float(terms["vtm_correct"])
            mlm_correct += float(terms["mlm_correct"])
            mlm_count += float(terms["mlm_count"])
            seen += batch["input_ids"].shape[0]
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


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


class PretrainRecipe(Recipe):
    """Pre-training stage ``cfg.stage``: the stage1 / stage2 variant of the ``cfg.model`` preset,
    its VPC + MTC or MLM + VTM loss, its validation; the final weights are the model."""

    entry = "run_pretrain"
    purpose = "pre-train on"

    def __init__(self, cfg: PretrainConfig, corpus_path: Path, store_url: str, init_from: Optional[Path], features: Optional[str] = None) -> None:
        self.cfg = cfg
        self.corpus_path = Path(corpus_path)
        self.store_url = store_url
        self.init_from = Path(init_from) if init_from is not None else None
        self.features = features
        self.variant = "stage1" if cfg.stage == 1 else "stage2"
        self.validate_on_rank0_only = cfg.stage == 2  # MLM/VTM accuracy over the val batches as they are drawn
        if cfg.stage == 2:
            self.tokenizer_required = (
                "config key 'tokenizer': stage 2 needs the stage-1 artifact's tokenizer (none in --init-from) or a named one"
            )
        self.init_report: Optional[dict] = None
        self.video_init: Optional[dict] = None

    def check(self) -> None:
        cfg, init_from = self.cfg, self.init_from
        if cfg.stage == 2 and cfg.video_init:  # also checked when the config is built; cfg may be edited since
            raise ConfigError(f"config key 'video_init': {_VIDEO_INIT_STAGE1_ONLY}")
        if cfg.stage == 2 and init_from is None:
            raise ConfigError("pretrain --stage 2 starts from a stage-1 artifact: give init_from (--init-from)")
        if cfg.stage == 1 and init_from is not None:
            raise ConfigError("pretrain --stage 1 starts from scratch (or the preset's pretrained text model): init_from is for stage 2")
        if init_from is not None and not (init_from / WEIGHTS_FILE).is_file():
            raise LfvilaError(f"--init-from {init_from}: no {WEIGHTS_FILE} (is it a finished stage-1 artifact?)")
        if cfg.stage == 1 and self.features is not None:
            raise ConfigError("config key 'features': stage 1 trains the video encoder, so its output cannot be cached")
        if self.features is not None:
            from .features import check_feature_sources

            check_feature_sources(self.features, self.store_url, init_from)

    def datasets(self, tokenizer, train_samples, val_samples):
        from ..data.loader import PretrainDataset

        cfg, root = self.cfg, self.corpus_path.parent
        if self.features is not None:
            from ..data.featurestore import FeatureStore
            from ..data.loader import PretrainFeatureDataset

            store = FeatureStore(self.features)
            train_ds = PretrainFeatureDataset(train_samples, self.store_url, tokenizer, cfg.loader, True, store, video_root=root)
            val_ds = PretrainFeatureDataset(val_samples, self.store_url, tokenizer, cfg.loader, False, store, video_root=root) if val_samples else None
            return train_ds, val_ds
        train_ds = PretrainDataset(train_samples, self.store_url, tokenizer, cfg.loader, train=True, video_root=root)
        val_ds = PretrainDataset(val_samples, self.store_url, tokenizer, cfg.loader, train=False, video_root=root) if val_samples else None
        return train_ds, val_ds

    def model_config(self, tokenizer):
        from ..model.presets import get_preset

        cfg = self.cfg
        config = get_preset(cfg.model, self.variant, text_model=cfg.text_model)
        config.objectives = cfg.objectives
        if config.text.bert_config is not None:
            # A randomly initialised BERT takes the tokenizer's vocabulary: with BERT's 30,522 rows
            # for the example's ~90 words, the MLM head spends stage 2 unlearning ids that never occur.
            config.text.bert_config = {**config.text.bert_config, "vocab_size": len(tokenizer)}
        if cfg.loader.max_tokens > config.text.max_tokens:
            raise ConfigError(f"config key 'loader.max_tokens': {cfg.loader.max_tokens} exceeds the model's {config.text.max_tokens} tokens per sentence")
        return config

    def build_model(self, config):
        from ..model.lfvila import build_model

        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)  # the fresh initialisation is reproducible
        model = build_model(config)
        rows = model.text_encoder.word_embeddings.num_embeddings
        if len(self.tokenizer) > rows:
            raise ConfigError(f"config key 'tokenizer': {len(self.tokenizer)} tokens, but the text model '{cfg.text_model}' has {rows} embedding rows")
        if cfg.stage == 2:
            self.init_report = load_stage1_into(model, self.init_from)
        if cfg.video_init:
            # Every rank loads the same file (no broadcast needed), before the Trainer copies the weights
            # into its engine. A resumed run does it too, and the checkpoint then loads over it.
            self.video_init = init_video_encoder(model, cfg.video_init)
        return model

    def set_trainable(self, model) -> int:
        return model.set_trainable(self.variant)

    def loss(self, engine, batch, step):
        if self.cfg.stage == 1:
            return stage1_loss(engine, engine.module, batch, step, self.cfg.objectives)
        return stage2_loss(engine, engine.module, batch, step, self.cfg.objectives, self.tokenizer)

    def baseline(self, model, val_ds, rank, world_size):
        if self.cfg.stage != 1:
            return None
        from ..evaluation import evaluate_stage1

        return evaluate_stage1(model, val_ds, self.cfg.val_batch, rank=rank, world_size=world_size)

    def predict(self, module, val_ds, rank, world_size):
        if self.cfg.stage == 1:
            from ..evaluation import evaluate_stage1

            return evaluate_stage1(module, val_ds, self.cfg.val_batch, rank=rank, world_size=world_size)
        return validate_stage2(module, val_ds, self.cfg.val_batch, self.cfg.objectives, self.tokenizer)

    def summary(self, run) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": self.cfg.stage,
            "model": self.cfg.model,
            "steps_this_run": len(run.result.losses),
            "excluded_windows": run.train_ds.excluded_windows,
        }
        if self.init_report is not None:
            out["init_from"] = {"path": str(self.init_from), **self.init_report}
        if self.video_init is not None:
            out["video_init"] = self.video_init
        if self.features is not None:
            out["features"] = {"store": str(self.features), "views": run.train_ds.views}
        if run.rank == 0:
            out["first_losses"] = losses_of(run.train_records[0]) if run.train_records else {}
            if run.baseline is not None:
                out["val_untrained"] = run.baseline
        return out


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
    features: Optional[str] = None,
) -> dict[str, Any]:
    """Train pre-training stage ``cfg.stage`` and write the finished model into ``out_dir``
    (see the module docstring and train/fit.py). ``resume``: None (fresh), "auto" (newest complete
    checkpoint in ``out_dir/run``) or a checkpoint path. ``features``: stage 2 from the feature
    store at this URL (``lfvila features`` of the same frame store and ``init_from``) instead of
    running the frozen video encoder. Returns a JSON-able summary."""
    recipe = PretrainRecipe(cfg, corpus_path, store_url, init_from, features)
    return fit(recipe, corpus_path, out_dir, rank=rank, world_size=world_size, progress=progress, resume=resume)
