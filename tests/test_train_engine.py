"""Trainer core over DeepSpeed on CPU: schedule, parameter groups, NaN/Inf skip, checkpoints,
resume equivalence (straight run == crash + resume), SIGKILL recovery.

Batches are a pure function of (epoch, micro-batch index), the model has dropout so that the RNG
restore matters, and everything runs in fp32 with ZeRO 2 on one gloo rank.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from lfvila_cli.errors import ConfigError, LfvilaError
from lfvila_cli.train import checkpoint as ckpt
from lfvila_cli.train.config import TrainConfig
from lfvila_cli.train.engine import Trainer, deepspeed_config
from lfvila_cli.train.schedule import lr_factor, parameter_groups, takes_weight_decay

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 3


class TinyNet(nn.Module):
    """Names like the real model's: a position table, a relative-position bias table, norms."""

    def __init__(self) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(4, 6)
        self.relative_position_bias_table = nn.Parameter(torch.randn(5, 2) * 0.02)
        self.fc1 = nn.Linear(6, 12)
        self.norm1 = nn.LayerNorm(12)
        self.drop = nn.Dropout(0.2)
        self.LayerNorm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, 6) -> (B,)
        h = x + self.position_embeddings.weight + self.relative_position_bias_table.sum()
        h = self.LayerNorm(self.drop(torch.relu(self.norm1(self.fc1(h)))))
        return self.head(h).mean(dim=(1, 2))


@pytest.fixture(autouse=True, scope="module")
def _scoped_process_group():
    """The Trainer sets single-process rendezvous variables in this process: undo them afterwards
    so that later tests' subprocesses do not inherit RANK/MASTER_PORT. The gloo group stays:
    DeepSpeed keeps its groups for the process's lifetime, and a later Trainer in this process
    (the CLI tests) would find them destroyed."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def make_model() -> TinyNet:
    torch.manual_seed(1234)
    return TinyNet()


def batches(epoch: int, start: int):
    for i in range(start, STEPS_PER_EPOCH * 2):  # grad_accum=2 micro-batches per step
        g = torch.Generator().manual_seed(epoch * 1000 + i)
        yield torch.randn(2, 4, 6, generator=g), torch.randn(2, generator=g)


def make_loss(nan_steps=(), crash_at=None):
    def loss_fn(engine, batch, step):
        if crash_at is not None and step == crash_at:
            raise KeyboardInterrupt("simulated crash")
        x, y = batch
        mse = (engine(x) - y).pow(2).mean()
        total = mse * float("nan") if step in nan_steps else mse
        return {"total": total, "mse": mse}

    return loss_fn


def config(**kw) -> TrainConfig:
    base = dict(precision="fp32", micro_batch=2, grad_accum=2, epochs=2, warmup_steps=2, lr=1e-2, checkpoint_every=2, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def weights(trainer: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()}


# ---------------------------------------------------------------------------- pure functions
def test_lr_schedule_boundaries():
    peak_factors = [lr_factor(s, 10, 100, 0.01) for s in (0, 4, 9, 10, 55, 100, 150)]
    assert peak_factors[:3] == pytest.approx([0.1, 0.5, 1.0])
    assert peak_factors[3] == pytest.approx(1.0)  # first step after warm-up: the peak
    assert peak_factors[4] == pytest.approx(1 - 0.99 * 0.5)  # halfway through the decay
    assert peak_factors[5] == pytest.approx(0.01) and peak_factors[6] == pytest.approx(0.01)
    assert lr_factor(0, 0, 10, 0.01) == pytest.approx(1.0)


def test_parameter_groups_exclude_biases_norms_and_position_tables():
    model = make_model()
    model.fc1.weight.requires_grad_(False)
    groups = parameter_groups(model.named_parameters(), 0.05)
    decayed = {n for g in groups if g["weight_decay"] == 0.05 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    assert decayed == {"head.weight"}  # fc1.weight is frozen: left out of the optimizer
    assert plain == {
        "position_embeddings.weight", "relative_position_bias_table", "fc1.bias", "norm1.weight", "norm1.bias",
        "LayerNorm.weight", "LayerNorm.bias", "head.bias",
    }
    # Names as they appear in the LF-VILA model.
    for name in ("video_encoder.layers.0.blocks.1.attn.relative_position_bias_table",
                 "text_encoder.bert.embeddings.position_embeddings.weight",
                 "text_encoder.bert.encoder.layer.3.output.LayerNorm.weight",
                 "video_encoder.clip_norm.weight", "fusion.norm.bias"):
        assert not takes_weight_decay(name), name
    assert takes_weight_decay("text_encoder.bert.encoder.layer.3.attention.self.query.weight")
    assert takes_weight_decay("text_encoder.bert.embeddings.word_embeddings.weight")


def test_deepspeed_config_and_validation():
    ds = deepspeed_config(TrainConfig(micro_batch=16, grad_accum=3), world_size=4)
    assert ds["train_batch_size"] == 16 * 3 * 4 and ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["gradient_clipping"] == 1.0
    with pytest.raises(ConfigError, match="train.zero_stage"):
        TrainConfig(zero_stage=0)
    with pytest.raises(ConfigError, match="train.final_lr_ratio"):
        TrainConfig(final_lr_ratio=2.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only on CPU")
def test_fp16_refused_on_cpu(tmp_path):
    with pytest.raises(ConfigError, match="train.precision") as err:
        Trainer(make_model(), make_loss(), config(precision="fp16"), tmp_path)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- training
def test_resume_equals_straight_run(tmp_path):
    straight = Trainer(make_model(), make_loss(), config(), tmp_path / "a")
    full = straight.train(batches, STEPS_PER_EPOCH)
    assert full.steps == 6 and len(full.losses) == 6 and full.bad_steps == 0
    expected = weights(straight)

    crashed = Trainer(make_model(), make_loss(crash_at=3), config(), tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        crashed.train(batches, STEPS_PER_EPOCH)
    assert ckpt.latest_complete(tmp_path / "b" / "checkpoints").name == "step_00000002"

    resumed = Trainer(make_model(), make_loss(), config(), tmp_path / "b")
    rest = resumed.train(batches, STEPS_PER_EPOCH, resume="auto")
    assert rest.losses == pytest.approx(full.losses[2:], abs=1e-7, rel=0)
    for name, value in weights(resumed).items():
        torch.testing.assert_close(value, expected[name], atol=1e-7, rtol=0)
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))  # no duplicates from the crashed run
    assert json.loads((tmp_path / "a" / "deepspeed_config.json").read_text())["zero_optimization"]["stage"] == 2


def test_auto_resume_ignores_incomplete_checkpoint(tmp_path):
    first = Trainer(make_model(), make_loss(), config(), tmp_path)
    first.train(batches, STEPS_PER_EPOCH)
    root = tmp_path / "checkpoints"
    (root / "step_00000006" / ckpt.MARKER).unlink()  # as if killed while saving step 6
    again = Trainer(make_model(), make_loss(), config(), tmp_path)
    assert again.resume("auto").name == "step_00000004"
    assert again.step == 4


def test_nan_step_is_skipped_and_counted(tmp_path):
    seen = {}
    inner = make_loss(nan_steps={2})

    def loss_fn(engine, batch, step):
        seen.setdefault(step, [p.detach().clone() for p in engine.module.parameters()])
        return inner(engine, batch, step)

    trainer = Trainer(make_model(), loss_fn, config(), tmp_path)
    result = trainer.train(batches, STEPS_PER_EPOCH)
    assert result.bad_steps == 1 and result.steps == 6
    unchanged = all(torch.equal(a, b) for a, b in zip(seen[2], seen[3]))
    moved = not all(torch.equal(a, b) for a, b in zip(seen[1], seen[2]))
    assert unchanged and moved
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step_applied"] for r in records] == [True, True, False, True, True, True]
    assert records[2]["loss/total"] is None and records[-1]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in weights(trainer).values())


def test_bad_step_budget_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(make_model(), make_loss(nan_steps={2, 3}), config(max_bad_steps=1), tmp_path)
    with pytest.raises(LfvilaError, match="train.max_bad_steps=1") as err:
        trainer.train(batches, STEPS_PER_EPOCH)
    assert "\n" not in str(err.value) and "step_00000002" in str(err.value)
    again = Trainer(make_model(), make_loss(), config(), tmp_path)
    assert again.resume("auto").name == "step_00000002"
    assert all(torch.isfinite(v).all() for v in weights(again).values())


def test_keep_last_k(tmp_path):
    trainer = Trainer(make_model(), make_loss(), config(checkpoint_every=1, keep_last_k=2), tmp_path)
    trainer.train(batches, STEPS_PER_EPOCH)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert names == ["step_00000005", "step_00000006"]
    assert all((tmp_path / "checkpoints" / n / ckpt.MARKER).is_file() for n in names)


# ---------------------------------------------------------------------------- SIGKILL
WORKER = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from test_train_engine import STEPS_PER_EPOCH, batches, config, make_loss, make_model
    from lfvila_cli.train.engine import Trainer

    inner = make_loss()
    def slow_loss(engine, batch, step):
        time.sleep({delay})
        return inner(engine, batch, step)

    trainer = Trainer(make_model(), slow_loss, config(checkpoint_every=1), sys.argv[1])
    trainer.train(batches, STEPS_PER_EPOCH, resume="auto")
    torch.save(trainer.engine.module.state_dict(), sys.argv[2])
    """
)


@pytest.mark.slow
def test_sigkilled_run_resumes_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)

    def worker(delay: float) -> list[str]:
        script = tmp_path / f"worker_{delay}.py"
        script.write_text(WORKER.format(tests=str(Path(__file__).parent), delay=delay))
        return [sys.executable, str(script), str(run_dir), str(tmp_path / "final.pt")]

    proc = subprocess.Popen(worker(0.25), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            latest = ckpt.latest_complete(run_dir / "checkpoints")
            if latest is not None and latest.name >= "step_00000002":
                break
            assert proc.poll() is None, "worker exited before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint within 60 s")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (tmp_path / "final.pt").exists()
    assert ckpt.latest_complete(run_dir / "checkpoints").name < "step_00000006"

    subprocess.run(worker(0.0), env=env, check=True, timeout=120, capture_output=True)
    straight = Trainer(make_model(), make_loss(), config(checkpoint_every=1), tmp_path / "straight")
    straight.train(batches, STEPS_PER_EPOCH)
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    for name, value in weights(straight).items():
        torch.testing.assert_close(final[name], value, atol=1e-7, rtol=0)
