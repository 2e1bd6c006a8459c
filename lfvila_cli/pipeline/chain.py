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

from ..config import load_yaml, parse_override, to_dict
from ..errors import ConfigError, LfvilaError
from .artifacts import Artifact, Workdir
from .plan import Planned
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


def check_stage(workdir: Workdir, stage: Stage, config: Any, inputs: Mapping[str, Artifact | Planned]) -> None:
    """Refuse inputs that cannot work with ``config`` (the stage's ``check``; ``plan.py``), before
    the stage runs: one ConfigError naming the key or input."""
    if stage.check is not None:
        stage.check(config, {name: Planned.of_artifact(workdir, a) if isinstance(a, Artifact) else a for name, a in inputs.items()})


def resolve_entries(path: str | Path, entries: list[Entry], overrides=()) -> list[Any]:
    """Every entry's resolved config; ``overrides``: ``STAGE.key=value``, applied to every entry
    of that stage. An error names the entry."""
    per_stage: dict[str, list[str]] = {}
    names = {entry.stage.name for entry in entries}
    for text in overrides:
        keys, _ = parse_override(text)
        if keys[0] not in names or len(keys) < 2:
            raise ConfigError(f"--set {text!r}: pipeline overrides start with a stage name ({', '.join(sorted(names))})")
        per_stage.setdefault(keys[0], []).append(text.split(".", 1)[1])
    configs = []
    for i, entry in enumerate(entries):
        try:
            configs.append(resolve_config(entry.stage, layers=[entry.config], overrides=per_stage.get(entry.stage.name, [])))
        except ConfigError as exc:
            raise ConfigError(f"{path}: stages[{i}] ({entry.stage.name}): {exc}") from None
    return configs


def plan_pipeline(workdir: Workdir, path: str | Path, entries: list[Entry], overrides=()) -> list[Any]:
    """Every entry's resolved config (``resolve_entries``), each checked against its inputs as
    they will be (an earlier entry's plan, else the artifact the input rule picks, which must
    exist), before any runs."""
    configs = resolve_entries(path, entries, overrides)
    earlier: dict[str, Planned] = {}
    by_id: dict[str, Planned] = {}
    for i, (entry, config) in enumerate(zip(entries, configs)):
        stage = entry.stage
        where = f"{path}: stages[{i}] ({stage.name})"
        try:
            inputs: dict[str, Planned] = {}
            for name in stage.input_names(config):
                if entry.inputs.get(name):
                    inputs[name] = by_id[entry.inputs[name]]
                elif name in earlier:
                    inputs[name] = earlier[name]
                else:
                    inputs[name] = Planned.of_artifact(workdir, workdir.resolve(name, "latest"))
            check_stage(workdir, stage, config, inputs)
        except LfvilaError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        planned = Planned(stage.name, to_dict(config), inputs=inputs, workdir=workdir, entry=i)
        earlier[stage.name] = planned
        if entry.id is not None:
            by_id[entry.id] = planned
    return configs


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
    """Run every entry of a pipeline file in order, each fed by the input rule (module docstring),
    after checking them all (``plan_pipeline``).

    ``overrides`` are ``STAGE.key=value`` (``prepare.example.train_videos=4``), applied to every
    entry of that stage.
    """
    entries = load_pipeline(path, stages)
    configs = plan_pipeline(workdir, path, entries, overrides)  # every stage checked before the first runs
    earlier: dict[str, Artifact] = {}  # stage name -> the artifact of its nearest earlier entry
    by_id: dict[str, Artifact] = {}
    results = []
    for i, (entry, config) in enumerate(zip(entries, configs)):
        stage = entry.stage
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
