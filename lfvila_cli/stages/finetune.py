"""The ``finetune`` stage: fine-tune a downstream task (``train/finetune.py``; docs/method.md §6).

Inputs: the task's ``cache`` artifact (``segment_mode=chunks``) and, with ``init=pretrained``,
the pre-training artifact it starts from (``pretrain1`` for retrieval, ``pretrain2`` for QA).
Key: the config but ``workers``, ``train.tensorboard`` only when set (``pretrain.train_key``),
``val_precision`` only when it changes validation (``pretrain.validation_key``),
plus the digest of the authors' checkpoint with ``init=release``. Resumable.
"""

from __future__ import annotations

from ..config import omit_when, to_dict
from ..pipeline.artifacts import file_digest
from ..pipeline.stage import Stage, StageContext
from ..train.config import FinetuneConfig
from .cache import corpus_of, frame_store_url
from .pretrain import train_key, validation_key

POLICY_FIELDS = ("workers",)


def key_config(cfg: FinetuneConfig) -> dict:
    own = {k: v for k, v in to_dict(cfg).items() if k not in POLICY_FIELDS}
    own = omit_when(own, choice_head_init="fresh")  # keys from before it existed
    return {**validation_key(own, cfg.train), "train": train_key(cfg.train)}


def input_names(cfg: FinetuneConfig) -> tuple[str, ...]:
    """The task's frames, and the pre-trained model it starts from."""
    return ("cache", cfg.spec.pretrained_stage) if cfg.init == "pretrained" else ("cache",)


def fingerprints(config: FinetuneConfig, inputs) -> dict:
    """init=release: the bytes of the authors' checkpoint file key the model."""
    if config.init == "release":
        return {"release_checkpoint": file_digest(config.release_checkpoint)}
    return {}


def run(ctx: StageContext) -> dict:
    """Fine-tune a task on a chunks frame store, from a pre-training artifact (or scratch / release)."""
    from ..train.finetune import run_finetune

    pretrained = [name for name in ("pretrain1", "pretrain2") if name in ctx.inputs]
    cache = ctx.inputs["cache"]
    return run_finetune(
        ctx.config,
        corpus_of(ctx.workdir, cache),
        frame_store_url(cache),
        ctx.out_dir,
        init_from=ctx.inputs[pretrained[0]].path if pretrained else None,
        rank=ctx.rank,
        world_size=ctx.world_size,
        progress=ctx.progress,
        resume=None if ctx.force else "auto",
    )


def check(config: FinetuneConfig, inputs: dict) -> None:
    """Before anything runs: a chunks store of the task's kind of items that fits the model it
    starts from (frames per chunk, frames in all, sentence slots; ``compat.py``)."""
    from ..data.loader_config import text_slots
    from .compat import check_frames, model_facts, preset_facts, require_corpus_kind, require_segment_mode

    spec, cache = config.spec, inputs["cache"]
    require_segment_mode(cache, "chunks", "fine-tuning spreads frames over the whole video")
    require_corpus_kind(cache, spec.kind, config.task)
    fused = spec.kind != "retrieval"
    if config.init == "pretrained":
        facts = model_facts(inputs[spec.pretrained_stage], fused)
    else:
        facts = preset_facts(config.model, fused)
    check_frames(cache, facts, spec.kind, text_slots(spec.kind, config.loader.clips_per_sample, config.subtitles))


def describe(summary: dict) -> str:
    selection = summary.get("selection") or {}
    parts = [f"{summary.get('task', '?')}: {summary.get('steps', '?')} steps"]
    if selection.get("metric"):
        parts.append(f"selected step {selection['step']} on {selection['metric']} {selection['value']:.3f}")
    elif selection:
        parts.append("no val split: final weights")
    return ", ".join(parts)


STAGE = Stage(
    name="finetune",
    version=1,
    config_class=FinetuneConfig,
    run=run,
    inputs=("cache", "pretrain1", "pretrain2"),  # those it may take; input_names picks per config
    select_inputs=input_names,
    fingerprints=fingerprints,
    key_config=key_config,
    resumable=True,
    distributed=True,  # every rank trains in one process group
    describe=describe,
    check=check,
)
