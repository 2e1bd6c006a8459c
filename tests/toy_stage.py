"""A small stage for testing the runner without video work.

``TOY_SLEEP`` makes it pause mid-write (for kill tests); ``TOY_FAIL`` makes it raise.
``calls`` counts how often the body ran in this process.
"""

import os
import time
from dataclasses import dataclass

from lfvila_cli.pipeline.stage import Stage
from lfvila_cli.stages import STAGES

calls = []


@dataclass
class ToyConfig:
    n: int = 3
    label: str = "a"
    workers: int = 1  # policy: does not change the output
    source_file: str = ""


def fingerprints(config, inputs):
    from lfvila_cli.pipeline.artifacts import file_digest

    return {config.source_file: file_digest(config.source_file)} if config.source_file else {}


def run(ctx):
    calls.append(ctx.key)
    (ctx.out_dir / "part1.txt").write_text("x" * ctx.config.n)
    if os.environ.get("TOY_FAIL"):
        raise RuntimeError("toy failure")
    if os.environ.get("TOY_SLEEP"):
        (ctx.out_dir.parent / "toy-started").write_text(str(os.getpid()))
        time.sleep(float(os.environ["TOY_SLEEP"]))
    upstream = ctx.inputs.get("toy")
    text = ctx.config.label * ctx.config.n
    if upstream is not None:
        text = (upstream.path / "out.txt").read_text() + "+" + text
    (ctx.out_dir / "out.txt").write_text(text)
    return {"length": len(text)}


TOY = Stage(
    name="toy",
    version=1,
    config_class=ToyConfig,
    run=run,
    fingerprints=fingerprints,
    policy_fields=("workers",),
    describe=lambda s: f"{s.get('length')} chars",
)
TOY_DOWN = Stage(
    name="toydown",
    version=1,
    config_class=ToyConfig,
    run=run,
    inputs=("toy",),
    describe=lambda s: f"{s.get('length')} chars",
)


def register():
    STAGES["toy"] = TOY
    STAGES["toydown"] = TOY_DOWN
