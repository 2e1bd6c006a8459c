"""The stage contract (docs/engineering.md §1).

A ``Stage`` is data: its name, a version bumped by hand when the meaning of its output changes,
its config class, the stages whose artifacts it reads, fingerprints of raw inputs, and a body
``run(ctx) -> summary``. Each stage module of ``lfvila_cli.stages`` declares one; the runner
(``runner.py``) keys, reuses or builds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import resolve, to_dict
from ..errors import ConfigError
from .artifacts import Artifact, Workdir


@dataclass
class StageContext:
    """What a stage's body gets: its resolved config, its input artifacts and where to write."""

    workdir: Workdir
    config: Any
    inputs: dict[str, Artifact]
    out_dir: Path
    key: str
    rank: int = 0
    world_size: int = 1
    progress: bool = True
    force: bool = False  # rebuilding an artifact of this key: resumable stages start their partial work afresh
    key_payload: dict = field(default_factory=dict)  # what the key was computed from (its fingerprints included)
    # False: the ranks need not run at the same time (a Slurm job array's tasks, ``Stage.independent_ranks``):
    # a rank does its share and waits for no other
    together: bool = True


def _no_summary(summary: dict) -> str:
    return ""


@dataclass(frozen=True)
class IndependentRanks:
    """How a resumable stage splits its work over ranks that need not run at the same time (the
    tasks of a Slurm job array; ``ranks.py``). Each rank, under the stage's lock, calls
    ``setup`` (make the shared output if no rank made it yet: idempotent), then without the lock
    runs the body with ``ctx.together`` False (its share; waiting for no other rank) and
    ``remaining`` (what is left to do, one phrase, or None when nothing is); the rank that finds
    nothing left calls ``summarize`` under the lock (finish what is left as one process would:
    normally nothing, and return the summary of the whole output) and commits."""

    setup: Callable[[StageContext], None]
    remaining: Callable[[StageContext], Optional[str]]
    summarize: Callable[[StageContext], dict]


@dataclass(frozen=True)
class Stage:
    name: str
    version: int
    config_class: type
    run: Callable[[StageContext], dict]  # the body: writes into ctx.out_dir, returns a JSON-able summary
    inputs: tuple[str, ...] = ()  # the input stages it may take
    # the inputs a given config takes, when they depend on it (finetune: the pre-training stage it
    # starts from, or none); default: ``inputs``
    select_inputs: Optional[Callable[[Any], tuple[str, ...]]] = None
    fingerprints: Optional[Callable[[Any, dict[str, Artifact]], dict]] = None  # raw inputs outside the store
    key_config: Optional[Callable[[Any], dict]] = None  # the config that shapes the output; default: all of it
    policy_fields: tuple[str, ...] = ()  # config fields that do not change the output
    resumable: bool = False  # keep the partial directory across runs and resume in it
    verify: Optional[Callable[[Artifact], Optional[str]]] = None  # why a committed artifact is unusable, checked on a hit
    fixed: dict = field(default_factory=dict)  # config values the stage itself sets (pretrain1: stage=1)
    describe: Callable[[dict], str] = _no_summary  # one line from an artifact's summary
    # fills the config values that default to what an input says (export: the frame size the model
    # was trained at) before the key is computed: complete(workdir, config, inputs) -> config
    complete: Optional[Callable[[Workdir, Any, dict[str, Artifact]], Any]] = None
    # the body runs on every rank in one torch.distributed process group (training): its ranks
    # must run together, with a rendezvous (``ranks.require_rendezvous``)
    distributed: bool = False
    # how its ranks may work without running together (a Slurm job array's tasks); None: under a
    # job array the stage is built by one task, as by one process
    independent_ranks: Optional[IndependentRanks] = None
    # refuses inputs that cannot work with this config before anything runs (``plan.py``):
    # check(config, {input name: Planned}) raises a one-line ConfigError
    check: Optional[Callable[[Any, dict], None]] = None
    # called before an existing artifact of the same key is reused: raises when this config's
    # run would have failed on it (prepare --strict on a corpus that rejected records)
    on_reuse: Optional[Callable[[Any, Artifact], None]] = None

    def input_names(self, config: Any) -> tuple[str, ...]:
        return tuple(self.select_inputs(config)) if self.select_inputs else self.inputs

    def keyed_config(self, config: Any) -> dict:
        """The part of ``config`` that keys the artifact: ``key_config`` (default: all of it)
        without the policy fields."""
        own = self.key_config(config) if self.key_config else to_dict(config)
        for name in self.policy_fields:
            own.pop(name, None)
        return own

    def key_payload(self, config: Any, inputs: dict[str, Artifact]) -> dict:
        return {
            "stage": self.name,
            "version": self.version,
            "config": self.keyed_config(config),
            "inputs": {name: artifact.manifest.get("key", artifact.key) for name, artifact in sorted(inputs.items())},
            "fingerprints": self.fingerprints(config, inputs) if self.fingerprints else {},
        }


def resolve_config(stage: Stage, files=(), overrides=(), layers=()) -> Any:
    """The stage's config from its defaults, config files, layers (a pipeline entry's mapping)
    and ``KEY=VALUE`` overrides, in that order; the values the stage fixes cannot be changed."""
    config = resolve(stage.config_class, files=files, overrides=overrides, layers=[stage.fixed, *layers])
    for key, value in stage.fixed.items():
        if getattr(config, key) != value:
            raise ConfigError(f"config key '{key}': the {stage.name} stage fixes it to {value!r}")
    return config


@dataclass
class StageResult:
    stage: str
    status: str  # "up to date", "done", "would run", "waiting for input", "partial" (a job-array task did its share; another commits)
    key: Optional[str] = None
    artifact: Optional[Artifact] = None
    message: str = ""
