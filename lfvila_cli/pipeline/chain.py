"""Pipeline files, and the one rule that picks a stage's input artifacts.

A pipeline file lists stages in order::

    description: ...
    stages:
      - stage: cache
        id: task-frames              # optional: a name later entries can take their input from
        config: {segment_mode: chunks}
      - stage: finetune
        inputs: {cache: task-frames}  # optional: which earlier entry each input comes from
        config: {task: activitynet}

The input rule (``pick_inputs``), the same for ``lfvila run`` and the single commands: an input
named explicitly (a pipeline entry's ``inputs``, or a command's option such as ``--cache``) is
that artifact; otherwise, in a pipeline, the artifact of the nearest earlier entry of that
stage; otherwise the artifact the stage's ``latest`` ref points to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..config import load_yaml, parse_override
from ..errors import ConfigError
from .artifacts import Artifact, Workdir
from .runner import run_stage
from .stage import Stage, StageResult, resolve_config


def pick_inputs(
    workdir: Workdir,
    stage: Stage,
    config: Any,
    refs: Optional[Mapping[str, str]] = None,
    named: Optional[Mapping[str, Artifact]] = None,
    earlier: Optional[Mapping[str, Artifact]] = None,
) -> dict[str, Artifact]:
    """The input artifacts of ``stage`` under ``config`` (see the module docstring): ``named``
    artifacts first, then ``refs`` (ref name, key prefix or directory, resolved in ``workdir``),
    then ``earlier`` (the nearest earlier pipeline entry of each stage), then ``latest``."""
    refs, named, earlier = refs or {}, named or {}, earlier or {}
    inputs = {}
    for name in stage.input_names(config):
        if name in named:
            inputs[name] = named[name]
        elif refs.get(name):
            inputs[name] = workdir.resolve(name, refs[name])
        elif name in earlier:
            inputs[name] = earlier[name]
        else:
            inputs[name] = workdir.resolve(name, "latest")
    return inputs


@dataclass
class Entry:
    """One entry of a pipeline file."""

    stage: Stage
    config: dict  # the entry's config mapping, a layer over the stage's defaults
    id: Optional[str] = None
    inputs: dict[str, str] = field(default_factory=dict)  # input stage -> id of an earlier entry


def load_pipeline(path: str | Path, stages: Mapping[str, Stage]) -> list[Entry]:
    """Parse and check a pipeline file against the known ``stages``."""
    data = load_yaml(path)
    unknown = sorted(set(data) - {"stages", "description"})
    if unknown:
        raise ConfigError(f"{path}: unknown pipeline key '{unknown[0]}' (known: description, stages)")
    items = data.get("stages")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list of {{stage: NAME, config: {{...}}}}")
    entries: list[Entry] = []
    ids: dict[str, Entry] = {}
    for i, item in enumerate(items):
        where = f"{path}: stages[{i}]"
        if not isinstance(item, dict) or "stage" not in item:
            raise ConfigError(f"{where} needs a 'stage' name")
        extra = sorted(set(item) - {"stage", "config", "id", "inputs"})
        if extra:
            raise ConfigError(f"{where}: unknown key '{extra[0]}' (known: stage, config, id, inputs)")
        if item["stage"] not in stages:
            raise ConfigError(f"unknown stage '{item['stage']}' (known: {', '.join(stages)})")
        stage = stages[item["stage"]]
        config = item.get("config") or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{where}.config must be a mapping")
        entry_id = item.get("id")
        if entry_id is not None and (not isinstance(entry_id, str) or not entry_id or entry_id in ids):
            raise ConfigError(f"{where}.id must be a name no other entry has, got {entry_id!r}")
        inputs = item.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise ConfigError(f"{where}.inputs must map an input stage to an earlier entry's id")
        for name, source in inputs.items():
            if name not in stage.inputs:
                raise ConfigError(f"{where}.inputs: {stage.name} takes no '{name}' input (it takes {', '.join(stage.inputs) or 'none'})")
            if source not in ids or ids[source].stage.name != name:
                raise ConfigError(f"{where}.inputs.{name}: no earlier {name} entry with id {source!r}")
        entry = Entry(stage, config, entry_id, dict(inputs))
        entries.append(entry)
        if entry_id is not None:
            ids[entry_id] = entry
    return entries


def run_pipeline(
    workdir: Workdir,
    path: str | Path,
    stages: Mapping[str, Stage],
    *,
    overrides: list[str] = (),
    force: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[StageResult]:
    """Run every entry of a pipeline file in order, each fed by the input rule (module docstring).

    ``overrides`` are ``STAGE.key=value`` (``prepare.example.train_videos=4``), applied to every
    entry of that stage.
    """
    entries = load_pipeline(path, stages)
    per_stage: dict[str, list[str]] = {}
    names = {entry.stage.name for entry in entries}
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] not in names or len(keys) < 2:
            raise ConfigError(f"--set {text!r}: pipeline overrides start with a stage name ({', '.join(sorted(names))})")
        per_stage.setdefault(keys[0], []).append(text.split(".", 1)[1])
    earlier: dict[str, Artifact] = {}  # stage name -> the artifact of its nearest earlier entry
    by_id: dict[str, Artifact] = {}
    results = []
    for i, entry in enumerate(entries):
        stage = entry.stage
        try:
            config = resolve_config(stage, layers=[entry.config], overrides=per_stage.get(stage.name, []))
        except ConfigError as exc:
            raise ConfigError(f"{path}: stages[{i}] ({stage.name}): {exc}") from None
        wanted = stage.input_names(config)
        named = {name: by_id[source] for name, source in entry.inputs.items() if name in wanted and source in by_id}
        missing = [
            name for name in wanted
            if name not in named and (entry.inputs.get(name) or name not in earlier)
        ]
        if dry_run and missing and any(r.status == "would run" for r in results):
            line = f"{stage.name}: would run after {', '.join(missing)}"
            echo(line)
            results.append(StageResult(stage.name, "waiting for input", message=line))
            continue
        inputs = pick_inputs(workdir, stage, config, named=named, earlier=earlier)
        result = run_stage(workdir, stage, config, inputs, force=force, dry_run=dry_run, progress=progress, echo=echo)
        results.append(result)
        if result.status == "partial":  # a job array's task did its share: the task that commits goes on
            echo(f"{stage.name}: the rest of the pipeline runs in the task that commits {stage.name}")
            break
        if result.artifact is not None:
            earlier[stage.name] = result.artifact
            if entry.id is not None:
                by_id[entry.id] = result.artifact
    return results
