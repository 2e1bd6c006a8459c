"""Whether a stage's inputs fit its config, checked before anything runs (``pipeline/plan.py``).

Each check reads configs only (an input's ``stage_config.json``, a finished model's
``config.json``, or a pipeline entry's resolved config): the segment mode of a frame store, the
kind of items of the corpus behind it, frame counts and sizes against the model, sentence slots.
What cannot be known from configs (a ``jsonl`` corpus' items, an answer vocabulary) is left to
the stage itself, which checks the data it loads with the same functions
(``data/loader_config.check_task_shapes``).
"""

from __future__ import annotations

from typing import Optional

from ..errors import ConfigError, LfvilaError
from ..pipeline.plan import Planned
from ..tasks import TASKS

# The kind of items each source's corpus holds; ``jsonl`` holds whatever its records are.
SOURCE_KINDS = {
    "hdvila": "retrieval", "activitynet": "retrieval", "didemo": "retrieval", "queryd": "retrieval", "cmd": "retrieval",
    "how2qa": "multiple_choice", "violin": "classification", "anet-qa": "classification",
}
EXAMPLE_KINDS = {"long-form": "retrieval", "how2qa": "multiple_choice", "violin": "classification"}
KIND_NAMES = {"retrieval": "paragraphs", "multiple_choice": "multiple-choice items", "classification": "classification items"}


def corpus_kind(prepare: Optional[Planned]) -> Optional[str]:
    """``retrieval`` (paragraphs), ``multiple_choice`` or ``classification``: what the corpus of a
    prepare input holds (as its summary counts it, else as its source says), or ``None`` when
    neither tells (a ``jsonl`` corpus not prepared yet, or one of several kinds; the input gone)."""
    if prepare is None:
        return None
    kinds = [kind for kind, count in ((prepare.artifact.summary.get("kinds") or {}) if prepare.artifact else {}).items() if count]
    if len(kinds) == 1:  # a corpus that exists says what it holds
        return kinds[0]
    cfg = prepare.config
    source = cfg.get("source")
    if source == "example":
        return EXAMPLE_KINDS.get((cfg.get("example") or {}).get("task", "long-form"))
    if source == "lfvila-jsonl":
        task = (cfg.get("lfvila_jsonl") or {}).get("task")
        return TASKS[task].kind if task in TASKS else None
    return SOURCE_KINDS.get(source)


def require_segment_mode(cache: Planned, mode: str, why: str) -> None:
    got = cache.config.get("segment_mode", "clips")
    if got != mode:
        raise ConfigError(f"input {cache.label} is a frame store of segment_mode={got}, but {why}: cache with --set segment_mode={mode}")


def require_corpus_kind(cache: Planned, kind: str, task: str) -> None:
    """The corpus behind a frame store holds the items ``task`` reads."""
    prepare = cache.input("prepare")
    found = corpus_kind(prepare)
    if found is not None and found != kind:
        source = prepare.config.get("source")
        raise ConfigError(
            f"config key 'task': {task} reads {KIND_NAMES[kind]}, but input {cache.label} holds the "
            f"{KIND_NAMES[found]} of {prepare.label} (--source {source})"
        )


def preset_facts(name: str, fused: bool) -> Optional[dict]:
    """``{frames_per_clip, max_sentences, max_frames}`` of a model preset (``max_frames``: the
    cross-modal encoder's, ``None`` without one); ``None`` for an unknown preset (its stage says so)."""
    from ..model.presets import get_preset

    try:
        config = get_preset(name, "stage2" if fused else "stage1")
    except LfvilaError:
        return None
    return {
        "frames_per_clip": config.video.frames_per_clip,
        "max_sentences": config.text.max_sentences,
        "max_frames": config.fusion.max_frames if fused and config.fusion is not None else None,
    }


def model_facts(model: Optional[Planned], fused: bool) -> Optional[dict]:
    """The facts of ``preset_facts`` for a model input: a finished model's ``config.json``, or
    for a pipeline entry not run yet, the model it will build (its preset, or the model it starts
    from). ``None`` when unknown."""
    if model is None:
        return None
    if model.artifact is not None:
        from ..model.files import read_config_json

        try:
            config = read_config_json(model.artifact.path)
            fusion = config.get("fusion") or {}
            return {
                "frames_per_clip": int(config["video"]["frames_per_clip"]),
                "max_sentences": int(config["text"]["max_sentences"]),
                "max_frames": int(fusion["max_frames"]) if fused and fusion else None,
            }
        except (LfvilaError, KeyError, TypeError, ValueError):
            return None  # the stage reports a broken model itself
    cfg = model.config
    if model.stage == "finetune" and cfg.get("init") == "pretrained" and cfg.get("task") in TASKS:
        return model_facts(model.input(TASKS[cfg["task"]].pretrained_stage), fused)  # its architecture
    return preset_facts(cfg.get("model", ""), fused)


def require_clip_frames(cache: Planned, facts: Optional[dict], unit: str) -> None:
    """A store's frames per segment (``unit``: "segment" or "chunk") are the model's clips."""
    k = int(cache.config.get("frames_per_segment", 0))
    if facts is not None and k != facts["frames_per_clip"]:
        raise ConfigError(
            f"input {cache.label} holds {k} frames per {unit}, but the model's clips are {facts['frames_per_clip']} frames: "
            f"cache with --set frames_per_segment={facts['frames_per_clip']}"
        )


def check_frames(cache: Planned, facts: Optional[dict], kind: str, slots: int) -> None:
    """A chunks store and a task's text slots against a model's facts."""
    if facts is None:
        return
    from ..data.loader_config import check_task_shapes

    k, n = int(cache.config.get("frames_per_segment", 0)), int(cache.config.get("num_chunks") or 0)
    check_task_shapes(kind, k, n, slots, facts["frames_per_clip"], facts["max_frames"], facts["max_sentences"], store=f"input {cache.label}")
