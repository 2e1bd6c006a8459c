"""The ``prepare`` stage: a source's annotations -> the corpus (samples.jsonl, stats.json).

Key: the selected source's options (``data.prepare.key_config``) and the bytes of every
annotation file it reads. No input stage.
"""

from __future__ import annotations

from pathlib import Path

from ..data.corpus import CORPUS_FILE
from ..data.prepare import PrepareConfig, first_rejection, key_config, prepare, raw_inputs
from ..errors import DataError
from ..pipeline.artifacts import KEY_CHARS, Artifact, file_digest
from ..pipeline.stage import Stage, StageContext


def fingerprints(config: PrepareConfig, inputs) -> dict:
    return {path: file_digest(path) for path in raw_inputs(config)}


def run(ctx: StageContext) -> dict:
    return prepare(ctx.config, ctx.out_dir)


def check(config: PrepareConfig, inputs: dict) -> None:
    """Before anything runs: the selected source's required options are set (what its files are
    is checked when it runs)."""
    raw_inputs(config)


def on_reuse(config: PrepareConfig, artifact: Artifact) -> None:
    """``strict`` is not part of the key, so a corpus a non-strict run made is reused by a strict
    one: it fails as the strict run would have, when that corpus rejected records."""
    rejected = artifact.summary.get("rejected") or 0
    if config.strict and rejected:
        raise DataError(f"--strict: the corpus {artifact.key[:KEY_CHARS]} (up to date) rejected {rejected} record(s), first: {first_rejection(artifact.path)}")


def corpus_file(artifact: Artifact) -> Path:
    """The corpus file of a prepare artifact."""
    return artifact.path / CORPUS_FILE


def describe(summary: dict) -> str:
    counts = summary.get("splits", {})
    splits = ", ".join(f"{k} {counts[k]}" for k in ("train", "val", "test") if counts.get(k))
    rejected = f", {summary['rejected']} rejected" if summary.get("rejected") else ""
    short = f", {summary['short_paragraphs']} too short to pre-train on" if summary.get("short_paragraphs") else ""
    return f"{summary.get('samples', '?')} samples ({splits}), {summary.get('segments', '?')} segments{rejected}{short}"


STAGE = Stage(
    name="prepare",
    # 2: untimed segments, task fields checked; the example's How2QA distractors;
    # 3: reader fixes (ActivityNet and VALUE VIOLIN ids, clamped and clipped times, How2QA test split)
    # 4: the example's How2QA items: text alone at chance (absent events drawn as the video's own,
    #    the object named by its shape)
    version=4,
    config_class=PrepareConfig,
    run=run,
    fingerprints=fingerprints,
    key_config=key_config,
    policy_fields=("strict",),  # whether the stage fails, never what the corpus holds
    describe=describe,
    on_reuse=on_reuse,
    check=check,
)
