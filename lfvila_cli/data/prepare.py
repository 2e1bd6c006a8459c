"""Building the long-form corpus from a source's annotations (the body of the ``prepare`` stage).

Every source module (``example`` and those in ``formats/``) yields parsed ``Sample`` records;
this module validates them centrally (one rule set for every source), counts rejections by
reason, writes ``samples.jsonl`` + ``stats.json`` and, with ``strict``, fails on the first
rejection. The stage runner writes into a temporary directory, so a failed prepare leaves no
artifact behind.
"""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

from ..errors import DataError
from .corpus import CORPUS_FILE, STATS_FILE, Rejections, Sample, validation_error, write_corpus
from .example import ExampleConfig
from .formats.activitynet import ActivityNetConfig
from .formats.anetqa import AnetQaConfig
from .formats.cmd import CmdConfig
from .formats.didemo import DidemoConfig
from .formats.hdvila import HdvilaConfig
from .formats.how2qa import How2qaConfig
from .formats.jsonl import JsonlConfig
from .formats.lfvila_jsonl import LfvilaJsonlConfig
from .formats.queryd import QuerydConfig
from .formats.violin import ViolinConfig

log = logging.getLogger(__name__)

# source name -> module implementing ``read(cfg, out_dir, rejections)`` and ``raw_inputs(cfg)``
SOURCES = {
    "example": "lfvila_cli.data.example",
    "hdvila": "lfvila_cli.data.formats.hdvila",
    "activitynet": "lfvila_cli.data.formats.activitynet",
    "didemo": "lfvila_cli.data.formats.didemo",
    "queryd": "lfvila_cli.data.formats.queryd",
    "cmd": "lfvila_cli.data.formats.cmd",
    "violin": "lfvila_cli.data.formats.violin",
    "jsonl": "lfvila_cli.data.formats.jsonl",
    "how2qa": "lfvila_cli.data.formats.how2qa",
    "anet-qa": "lfvila_cli.data.formats.anetqa",
    "lfvila-jsonl": "lfvila_cli.data.formats.lfvila_jsonl",
}
Source = Literal["example", "hdvila", "activitynet", "didemo", "queryd", "cmd", "violin", "jsonl", "how2qa", "anet-qa", "lfvila-jsonl"]


@dataclass
class PrepareConfig:
    source: Source = "example"
    strict: bool = False  # any rejected record fails the stage
    example: ExampleConfig = field(default_factory=ExampleConfig)
    hdvila: HdvilaConfig = field(default_factory=HdvilaConfig)
    activitynet: ActivityNetConfig = field(default_factory=ActivityNetConfig)
    didemo: DidemoConfig = field(default_factory=DidemoConfig)
    queryd: QuerydConfig = field(default_factory=QuerydConfig)
    cmd: CmdConfig = field(default_factory=CmdConfig)
    violin: ViolinConfig = field(default_factory=ViolinConfig)
    jsonl: JsonlConfig = field(default_factory=JsonlConfig)
    how2qa: How2qaConfig = field(default_factory=How2qaConfig)
    anet_qa: AnetQaConfig = field(default_factory=AnetQaConfig)
    lfvila_jsonl: LfvilaJsonlConfig = field(default_factory=LfvilaJsonlConfig)

    @property
    def source_field(self) -> str:
        """The field holding the selected source's options: ``anet-qa`` -> ``anet_qa``."""
        return self.source.replace("-", "_")

    def source_config(self):
        return getattr(self, self.source_field)


def key_config(cfg: PrepareConfig) -> dict:
    """Only the selected source's options key the corpus: editing another source's options does not.

    ``strict`` is left out: it decides whether the stage fails, never what a finished corpus holds.
    """
    from ..config import to_dict

    return {"source": cfg.source, cfg.source_field: to_dict(cfg.source_config())}


def raw_inputs(cfg: PrepareConfig) -> list[str]:
    return list(_module(cfg.source).raw_inputs(cfg.source_config()))


def _module(source: str):
    return importlib.import_module(SOURCES[source])


def _validated(samples: Iterable[Sample], rejections: Rejections) -> Iterator[Sample]:
    for sample in samples:
        reason = validation_error(sample)
        if reason is None:
            yield sample
        else:
            rejections.add(reason, sample.where)


def first_rejection(corpus_dir: Path) -> str:
    """``file:line: reason`` of the first rejection a prepared corpus counted (``stats.json``),
    as ``--strict`` reports it."""
    try:
        rejected = json.loads((Path(corpus_dir) / STATS_FILE).read_text(encoding="utf-8"))["rejected"]
        reason = next(iter(rejected["by_reason"]))
        return f"{rejected['examples'][reason][0]}: {reason}"
    except (OSError, ValueError, KeyError, StopIteration, IndexError):
        return f"see {Path(corpus_dir) / STATS_FILE}"


def prepare(cfg: PrepareConfig, out_dir: Path) -> dict:
    """Write the corpus for ``cfg.source`` into ``out_dir``; returns the stage summary."""
    rejections = Rejections()
    samples = _module(cfg.source).read(cfg.source_config(), out_dir, rejections)
    stats = write_corpus(out_dir, _validated(samples, rejections), rejections)
    stats["source"] = cfg.source
    for extra in sorted(out_dir.glob("*.jsonl")):
        if extra.name != CORPUS_FILE:
            stats.setdefault("task_files", {})[extra.name] = sum(1 for line in extra.open() if line.strip())
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    if rejections.adjusted.total:
        log.info("prepare: adjusted %d record(s): %s", rejections.adjusted.total, dict(rejections.adjusted.counts))
    if rejections.total:
        log.warning("prepare: rejected %d record(s): %s", rejections.total, dict(rejections.counts))
        if cfg.strict:
            raise DataError(f"--strict: {rejections.total} record(s) rejected, first: {rejections.first()}")
    if stats["samples"] == 0:
        raise DataError(f"prepare --source {cfg.source}: no valid samples ({rejections.total} rejected)")
    short = stats["short_paragraphs"]
    if short["count"]:
        log.warning(
            "prepare: %d of %d paragraphs have fewer than %d segments: pre-training (loader.clips_per_sample=%d) skips them; "
            "retrieval fine-tuning and evaluation use them", short["count"], stats["paragraphs"], short["fewer_than"], short["fewer_than"],
        )
    return {
        "samples": stats["samples"],
        "splits": stats["splits"],
        "segments": stats["segments"],
        "rejected": rejections.total,
        "short_paragraphs": short["count"],
        "kinds": stats["kinds"],
        "task_files": stats.get("task_files", {}),
    }
