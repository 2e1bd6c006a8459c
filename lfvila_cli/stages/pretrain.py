"""The ``pretrain1`` and ``pretrain2`` stages: pre-training stage 1 (VPC + MTC) and stage 2
(MLM + VTM) over a frame store (``train/pretrain.py``; docs/method.md §4–§5).

Inputs: a ``cache`` artifact, and for stage 2 the ``pretrain1`` artifact it starts from (and,
with ``features: true``, a ``features`` artifact of both: docs/method.md §8). Key:
the config but its policy fields (``workers``), ``video_init``, ``features`` and
``train.tensorboard`` only when set, ``val_precision`` only when it changes validation
(``validation_key``), plus the digest of the Swin-2D checkpoint it names. Resumable from the newest
complete checkpoint.
"""

from __future__ import annotations

from ..config import omit_when, to_dict
from ..errors import ConfigError
from ..pipeline.artifacts import file_digest
from ..pipeline.stage import Stage, StageContext
from ..train.config import PretrainConfig, TrainConfig
from .cache import corpus_of, frame_store_url
from .features import check_pretrain2, feature_store_url

POLICY_FIELDS = ("workers",)  # change how a run goes, not what it makes: left out of the artifact key


def key_config(cfg: PretrainConfig) -> dict:
    """The config that shapes the model (the artifact key): everything but ``POLICY_FIELDS``, and
    ``video_init`` and ``features`` only when set (keys made before it existed stay valid; ``fingerprints`` adds
    the checkpoint's digest); ``train`` as ``train_key`` has it."""
    own = omit_when({k: v for k, v in to_dict(cfg).items() if k not in POLICY_FIELDS}, video_init="", features=False)
    own["objectives"] = omit_when(own["objectives"], vtm_order_negatives=0.0)  # keys from before it existed
    return {**validation_key(own, cfg.train), "train": train_key(cfg.train)}


def train_key(train: TrainConfig) -> dict:
    """A training config as the artifact key has it: ``tensorboard`` only when set. The event files
    change no weight, but they are in the artifact (``run/tensorboard/``), so a run asked for them
    is its own artifact, never a hit without them; unset, keys made before the option existed
    stay valid."""
    return omit_when(to_dict(train), tensorboard=False)


def validation_key(own: dict, train: TrainConfig) -> dict:
    """``val_precision`` as the key has it: only when training in fp32 (in bf16 or fp16 the
    weights are already at that precision, and validation runs at it) and then not at fp32, the
    precision validation ran at before the setting existed."""
    if train.precision != "fp32":
        return {k: v for k, v in own.items() if k != "val_precision"}
    return omit_when(own, val_precision="fp32")


def fingerprints(config: PretrainConfig, inputs) -> dict:
    """video_init set: the bytes of the Swin-2D checkpoint key the model; unset: nothing (keys as before)."""
    if config.video_init:
        from ..train.pretrain import video_init_file

        return {"video_init": file_digest(str(video_init_file(config.video_init)))}
    return {}


def run(ctx: StageContext) -> dict:
    """Pre-training stage 1 or 2 over a frame store (and, for stage 2, a stage-1 model)."""
    from ..train.pretrain import run_pretrain

    cache = ctx.inputs["cache"]
    init_from = ctx.inputs["pretrain1"].path if "pretrain1" in ctx.inputs else None
    features = feature_store_url(ctx.inputs["features"]) if "features" in ctx.inputs else None
    return run_pretrain(
        ctx.config,
        corpus_of(ctx.workdir, cache),
        frame_store_url(cache),
        ctx.out_dir,
        init_from=init_from,
        rank=ctx.rank,
        world_size=ctx.world_size,
        progress=ctx.progress,
        resume=None if ctx.force else "auto",
        features=features,
    )


def describe(summary: dict) -> str:
    parts = [f"{summary.get('steps', '?')} steps"]
    val = summary.get("val") or {}
    if "R@1" in val:
        parts.append(f"val R@1 {val['R@1']:.3f} (chance {val.get('chance_R@1', float('nan')):.3f})")
    if "temporal_order_accuracy" in val:
        parts.append(f"temporal-order accuracy {val['temporal_order_accuracy']:.3f}")
    for name in ("mlm_accuracy", "vtm_accuracy"):
        if name in val:
            parts.append(f"{name.replace('_', ' ')} {val[name]:.3f}")
    return ", ".join(parts)


def check(config: PretrainConfig, inputs: dict) -> None:
    """Before anything runs: a store of clips whose frames per segment are the model's clips, and
    no more sentences per window than the model has slots (``compat.py``)."""
    from .compat import model_facts, preset_facts, require_clip_frames, require_segment_mode

    cache = inputs["cache"]
    require_segment_mode(cache, "clips", "pre-training draws windows of consecutive clips")
    if "features" in inputs:
        check_pretrain2(to_dict(config.loader), inputs)
    facts = model_facts(inputs["pretrain1"], fused=False) if config.stage == 2 else preset_facts(config.model, fused=False)
    if facts is None:
        return
    require_clip_frames(cache, facts, "segment")
    if config.loader.clips_per_sample > facts["max_sentences"]:
        raise ConfigError(
            f"config key 'loader.clips_per_sample': {config.loader.clips_per_sample} sentences per window, more than the model's {facts['max_sentences']}"
        )


def stage2_inputs(config: PretrainConfig) -> tuple[str, ...]:
    """The frames and the stage-1 model, and with ``features`` the feature store of both."""
    return ("cache", "pretrain1", "features") if config.features else ("cache", "pretrain1")


def _stage(number: int, inputs: tuple[str, ...]) -> Stage:
    """``pretrain1`` / ``pretrain2``: one config class, the stage number fixed by the stage."""
    return Stage(
        name=f"pretrain{number}",
        version=2,  # 2: lfvila-tiny with 8×8 patches and a 128-wide BERT sized to the tokenizer
        config_class=PretrainConfig,
        run=run,
        inputs=inputs,
        select_inputs=stage2_inputs if number == 2 else None,
        fingerprints=fingerprints,
        key_config=key_config,
        resumable=True,
        distributed=True,  # every rank trains in one process group
        fixed={"stage": number},
        describe=describe,
        check=check,
    )


STAGE1 = _stage(1, inputs=("cache",))
STAGE2 = _stage(2, inputs=("cache", "pretrain1", "features"))
