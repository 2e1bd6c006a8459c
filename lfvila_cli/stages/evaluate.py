"""The ``evaluate`` stage: score a model on one split of a task and write the report
(``report.py``): metrics.json, report.md, predictions.jsonl and figures.

Inputs: the task's ``cache`` artifact and the model: a ``finetune`` artifact, or with
``model=pretrain1`` a stage-1 model scored zero-shot on retrieval. Key: the whole config,
``precision`` only when it is not fp32 (evaluations made before the key existed ran in fp32).
"""

from __future__ import annotations

from ..config import omit_when, to_dict
from ..pipeline.artifacts import Workdir
from ..pipeline.stage import Stage, StageContext
from ..report import EvaluateConfig
from .cache import corpus_of, frame_store_url


def key_config(cfg: EvaluateConfig) -> dict:
    """The config as the key has it: ``precision`` left out at fp32, the precision every
    evaluation ran at before it could be chosen, so those artifacts keep their keys."""
    return omit_when(to_dict(cfg), precision="fp32")


def input_names(cfg: EvaluateConfig) -> tuple[str, ...]:
    """The task's frames and the model scored."""
    return ("cache", cfg.model)


def default_cache(workdir: Workdir, model_ref: str) -> str:
    """The cache a fine-tuned model is scored on unless told otherwise: the one it was trained
    on (the latest cache may belong to another task), as a full key."""
    return workdir.resolve("finetune", model_ref).manifest.get("inputs", {}).get("cache", "latest")


def run(ctx: StageContext) -> dict:
    """Score a fine-tuned (or, zero-shot, a stage-1) model on one split of a task."""
    from ..report import run_evaluate

    model = ctx.inputs[ctx.config.model]
    cache = ctx.inputs["cache"]
    return run_evaluate(ctx.config, corpus_of(ctx.workdir, cache), frame_store_url(cache), model.path, model.config, ctx.out_dir)


def check(config: EvaluateConfig, inputs: dict) -> None:
    """Before anything runs: a chunks store holding the items of the model's task, at the model's
    frames per chunk (``compat.py``)."""
    from ..errors import ConfigError
    from ..tasks import TASKS
    from .compat import model_facts, require_clip_frames, require_corpus_kind, require_segment_mode

    cache, model = inputs["cache"], inputs[config.model]
    require_segment_mode(cache, "chunks", "evaluation spreads frames over the whole video")
    task = model.config.get("task", "") if config.model == "finetune" else (config.task or "activitynet")
    if config.model == "finetune" and config.task and task and config.task != task:
        raise ConfigError(f"config key 'task': the model {model.label} was fine-tuned for {task!r}, not {config.task!r}")
    if task not in TASKS:
        return
    kind = TASKS[task].kind
    require_corpus_kind(cache, kind, task)
    require_clip_frames(cache, model_facts(model, fused=kind != "retrieval"), "chunk")


def describe(summary: dict) -> str:
    """One line for the stage runner: the task, the split and the headline figures."""
    m = summary.get("metrics", {})
    where = f"{summary.get('task', '?')} {summary.get('split', '?')}" + (" zero-shot" if summary.get("zero_shot") else "")
    if "accuracy" in m:
        return f"{where}: accuracy {m['accuracy']:.3f} (chance {m['chance']:.3f}, {m['num_items']} items)"
    if "text_to_video" in m:
        t2v = m["text_to_video"]
        return f"{where}: text→video R@1 {t2v['R@1']:.3f} R@5 {t2v['R@5']:.3f} MedR {t2v['MedR']:.1f} (chance R@1 {m['chance']['R@1']:.3f}, {m['num_videos']} videos)"
    return where


STAGE = Stage(
    name="evaluate",
    version=1,
    config_class=EvaluateConfig,
    run=run,
    inputs=("cache", "finetune", "pretrain1"),
    select_inputs=input_names,
    key_config=key_config,
    describe=describe,
    check=check,
)
