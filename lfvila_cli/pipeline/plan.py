"""What a stage's inputs will be, before anything runs: ``Planned``.

``lfvila run`` checks every stage of a pipeline before the first one runs (``chain.plan_pipeline``),
and a single command checks its stage before it runs: a typo or a mismatch in the last stage
(a store of the wrong segment mode, a model trained on another frame count) fails in seconds,
not after the hours the earlier stages take. An input is then either an artifact that exists or
an earlier entry of the pipeline, which has not run yet but whose resolved config is known.
Each stage's ``check(config, inputs)`` reads both the same way, through ``Planned``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .artifacts import KEY_CHARS, Artifact, Workdir


@dataclass
class Planned:
    """One input as it will be: its stage, its resolved config (a dict, as ``stage_config.json``
    holds it) and the inputs it reads in turn; ``artifact`` is the artifact when it exists
    already, ``None`` for an earlier pipeline entry."""

    stage: str
    config: dict
    artifact: Optional[Artifact] = None
    inputs: dict[str, "Planned"] = field(default_factory=dict)  # an entry's own inputs (artifacts: read on demand)
    workdir: Optional[Workdir] = None
    entry: Optional[int] = None  # the pipeline entry's index, for messages

    @classmethod
    def of_artifact(cls, workdir: Workdir, artifact: Artifact) -> "Planned":
        return cls(artifact.stage, artifact.config, artifact=artifact, workdir=workdir)

    def input(self, name: str) -> Optional["Planned"]:
        """The input ``name`` this one reads (an artifact's: where its manifest says; ``None`` when gone)."""
        if self.artifact is None:
            return self.inputs.get(name)
        found = self.workdir.input_of(self.artifact, name) if self.workdir is not None else None
        return None if found is None else Planned.of_artifact(self.workdir, found)

    @property
    def label(self) -> str:
        """``cache/3f2a9c1e`` for an artifact, ``cache (stages[1])`` for a pipeline entry."""
        if self.artifact is not None:
            return f"{self.stage}/{self.artifact.key[:KEY_CHARS]}"
        return f"{self.stage} (stages[{self.entry}])" if self.entry is not None else self.stage
