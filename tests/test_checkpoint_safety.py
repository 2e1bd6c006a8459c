"""Checkpoints are read without unpickling arbitrary objects, and damaged or unwritable files are
one-line errors (or, for a damaged newest checkpoint, a fall back to the previous one).

Trainer runs reuse the tiny model and batches of test_train_engine (fp32 ZeRO 2 unless a test
says otherwise, one gloo rank).
"""

import errno
import logging
import os
import pickle
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers_ranks import run_two_ranks, write_worker  # noqa: E402
from test_train_engine import STEPS_PER_EPOCH, _scoped_process_group, batches, config, make_loss, make_model, weights  # noqa: E402,F401

from lfvila_cli.errors import CheckpointError, LfvilaError, UnsafeCheckpointError  # noqa: E402
from lfvila_cli.train import checkpoint as ckpt  # noqa: E402
from lfvila_cli.train.engine import Trainer  # noqa: E402


# DeepSpeed's file names (ZeRO 1/2): the module state, and each rank's optimizer partition.
MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIMIZER_PARTITIONS = "*zero_pp_rank_*_mp_rank_00_optim_states.pt"


class Payload:
    """Unpickling it runs a shell command that writes ``target`` (what a planted file would do)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return os.system, (f"echo pwned > '{self.target}'",)


def trained(run_dir: Path, **kw) -> Trainer:
    trainer = Trainer(make_model(), make_loss(), config(**kw), run_dir)
    trainer.train(batches, STEPS_PER_EPOCH)
    return trainer


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------- no unpickling
def test_planted_pickle_in_a_checkpoint_is_refused_and_never_run(tmp_path):
    trained(tmp_path)
    newest = tmp_path / "checkpoints" / "step_00000006"
    target = tmp_path / "pwned.txt"
    torch.save({"module": Payload(target)}, newest / MODEL_STATES)
    again = Trainer(make_model(), make_loss(), config(), tmp_path)
    with pytest.raises(UnsafeCheckpointError) as err:
        again.train(batches, STEPS_PER_EPOCH, resume="auto")
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, LfvilaError)
    assert str(newest / MODEL_STATES) in message and "posix.system" in message and "refused" in message
    assert not target.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["torch-zip", "plain-pickle"])
def test_load_file_refuses_payloads_in_either_container(tmp_path, legacy):
    target, path = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    if legacy:
        path.write_bytes(pickle.dumps({"x": Payload(target)}, protocol=4))
    else:
        torch.save({"x": Payload(target)}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt: refused: the file holds posix\.system besides tensors"):
        ckpt.load_file(path)
    assert not target.exists()


def test_deepspeed_loads_outside_our_engine_are_forced_weights_only(tmp_path):
    target, path = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    torch.save({"x": Payload(target)}, path)
    with ckpt.weights_only_loading():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=False)  # what DeepSpeed's loaders pass
    assert not target.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def _cast_loss(engine, batch, step):
    """The MSE loss with inputs in the parameters' dtype (bf16 engines take bf16 inputs)."""
    x, y = batch
    dtype = next(engine.module.parameters()).dtype
    mse = (engine(x.to(dtype)).float() - y).pow(2).mean()
    return {"total": mse, "mse": mse}


@pytest.mark.parametrize("zero_stage, precision", [(1, "fp32"), (1, "bf16"), (2, "bf16")])
def test_every_supported_layout_resumes_under_the_allow_list(tmp_path, zero_stage, precision):
    """ZeRO 1 and 2, fp32 and bf16 (2/fp32 is test_train_engine's resume test): the files hold
    only allow-listed types, and a run resumed from its step-2 checkpoint ends where a straight
    run ends (steps 1-2 are warm-up: their learning rates do not depend on max_steps)."""
    cfg = dict(zero_stage=zero_stage, precision=precision)
    straight = Trainer(make_model(), _cast_loss, config(**cfg), tmp_path / "a")
    straight.train(batches, STEPS_PER_EPOCH)
    expected = weights(straight)
    step2 = tmp_path / "a" / "checkpoints" / "step_00000004"
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in ckpt.allowed_globals()} | {"collections.OrderedDict"}
    for file in step2.glob("*.pt"):
        assert {g for g in ckpt.pickled_globals(file) if not g.startswith("torch.")} <= allowed, file

    split = tmp_path / "b"
    first = Trainer(make_model(), _cast_loss, config(max_steps=2, **cfg), split)
    first.train(batches, STEPS_PER_EPOCH)
    resumed = Trainer(make_model(), _cast_loss, config(**cfg), split)
    assert resumed.train(batches, STEPS_PER_EPOCH, resume="auto").steps == 6
    for name, value in weights(resumed).items():
        assert torch.equal(value, expected[name]), name


def test_fp16_loss_scaler_state_is_allowed(tmp_path):
    """fp16 (GPU only) keeps a DynamicLossScaler in the ZeRO state instead of a LossScaler."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    scaler = DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1, delayed_shift=2, consecutive_hysteresis=False)
    ckpt.save_file({"optimizer_state_dict": {"loss_scaler": scaler, "dynamic_loss_scale": True}}, tmp_path / "fp16.pt")
    back = ckpt.load_file(tmp_path / "fp16.pt")["optimizer_state_dict"]["loss_scaler"]
    assert isinstance(back, DynamicLossScaler) and back.cur_scale == 2.0**16 and back.dtype == torch.float16


# ---------------------------------------------------------------------------- damaged checkpoints
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    straight = trained(tmp_path / "straight")
    expected = weights(straight)

    run = tmp_path / "run"
    crashed = Trainer(make_model(), make_loss(crash_at=4), config(), run)  # checkpoints at 2 and 4
    with pytest.raises(KeyboardInterrupt):
        crashed.train(batches, STEPS_PER_EPOCH)
    bad = run / "checkpoints" / "step_00000004" / MODEL_STATES
    truncate(bad)
    resumed = Trainer(make_model(), make_loss(), config(), run)
    with caplog.at_level(logging.WARNING, logger="lfvila_cli.train.engine"):
        result = resumed.train(batches, STEPS_PER_EPOCH, resume="auto")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in w and "truncated or corrupt" in w and "previous complete checkpoint" in w for w in warnings), warnings
    assert result.steps == 6 and len(result.losses) == 4  # steps 3..6 trained again
    for name, value in weights(resumed).items():
        assert torch.equal(value, expected[name]), name
    assert ckpt.latest_complete(run / "checkpoints").name == "step_00000006"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "missing"])
def test_no_loadable_checkpoint_is_a_one_line_error(tmp_path, damage):
    trained(tmp_path, keep_last_k=2)  # step_00000004 and step_00000006
    for step in ("step_00000004", "step_00000006"):
        victim = tmp_path / "checkpoints" / step / next(
            p.name for p in (tmp_path / "checkpoints" / step).glob(OPTIMIZER_PARTITIONS)
        )
        if damage == "truncated":
            truncate(victim)
        elif damage == "empty":
            victim.write_bytes(b"")
        elif damage == "garbage":
            victim.write_bytes(random.Random(0).randbytes(4096))
        else:
            victim.unlink()
    again = Trainer(make_model(), make_loss(), config(), tmp_path)
    with pytest.raises(CheckpointError) as err:
        again.train(batches, STEPS_PER_EPOCH, resume="auto")
    message = str(err.value)
    assert "\n" not in message and not isinstance(err.value, UnsafeCheckpointError)
    assert message.startswith("no loadable checkpoint: all 2 complete ones") and "step_00000004" in message


def test_any_garbage_is_a_checkpoint_error(tmp_path):
    """Random bytes reach torch's weights-only unpickler as all kinds of errors (IndexError,
    KeyError, ...): every one is a CheckpointError naming the file."""
    path = tmp_path / "garbage.pt"
    for seed in range(300):
        path.write_bytes(random.Random(seed).randbytes(512))
        with pytest.raises(CheckpointError, match="garbage.pt: "):
            ckpt.load_file(path)


def test_explicit_damaged_checkpoint_is_an_error_not_a_fallback(tmp_path):
    trained(tmp_path)
    bad = tmp_path / "checkpoints" / "step_00000006" / "rng_rank0.pt"
    truncate(bad)
    again = Trainer(make_model(), make_loss(), config(), tmp_path)
    with pytest.raises(CheckpointError, match="rng_rank0.pt: unreadable checkpoint file, truncated or corrupt") as err:
        again.resume(tmp_path / "checkpoints" / "step_00000006")
    assert "\n" not in str(err.value)


TWO_RANK_TAIL = """
    trainer = Trainer(make_model(), loss_fn, config(epochs=1, checkpoint_every=1), sys.argv[1])
    trainer.train(batches, 3, resume="auto")
    torch.save(trainer.engine.module.state_dict(), sys.argv[2])
"""


def _two_ranks(script: Path, run_dir: Path, out: Path) -> list[str]:
    return run_two_ranks(script, lambda rank: [run_dir, f"{out}{rank}.pt"], timeout=180)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_fall_back_together(tmp_path):
    """Rank 1's optimizer partition of the newest checkpoint is cut short: both ranks agree to
    resume from the previous checkpoint and end with the weights of the undamaged run."""
    script = write_worker(tmp_path / "worker.py", TWO_RANK_TAIL)
    run_dir = tmp_path / "run"
    _two_ranks(script, run_dir, tmp_path / "straight")
    newest = run_dir / "checkpoints" / "step_00000003"
    bad = next(newest.glob("*zero_pp_rank_1_*optim_states.pt"))
    truncate(bad)
    outputs = _two_ranks(script, run_dir, tmp_path / "resumed")
    assert all(f"{bad}: unreadable checkpoint file" in text for text in outputs)
    for rank in range(2):
        straight = torch.load(tmp_path / f"straight{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resumed{rank}.pt", weights_only=True)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert (newest / "COMPLETE").is_file()  # saved again


# ---------------------------------------------------------------------------- failed writes
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (writes fail with ENOSPC)")
def test_disk_full_during_a_save_is_a_one_line_error(tmp_path):
    """The model-states file of the step-2 checkpoint is a link to /dev/full: every write to it
    fails with ENOSPC, as on a full disk."""
    folder = tmp_path / "checkpoints" / "step_00000002"
    folder.mkdir(parents=True)
    (folder / MODEL_STATES).symlink_to("/dev/full")
    trainer = Trainer(make_model(), make_loss(), config(), tmp_path)
    with pytest.raises(CheckpointError) as err:
        trainer.train(batches, STEPS_PER_EPOCH)
    assert str(err.value) == f"{folder / MODEL_STATES}: cannot write the checkpoint ({os.strerror(errno.ENOSPC)})"
    assert not (folder / ckpt.MARKER).exists() and ckpt.latest_complete(tmp_path / "checkpoints") is None


def test_disk_full_while_writing_the_marker(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(CheckpointError, match=r"step_00000003/\.COMPLETE\.tmp: cannot write the checkpoint marker \(No space left on device\)"):
        ckpt.mark_complete(tmp_path / "step_00000003", {"step": 3})


# ---------------------------------------------------------------------------- damaged model weights
SIZE = {"train_videos": 4, "val_videos": 2, "test_videos": 0, "max_clips": 4, "height": 64, "width": 96}
FRAMES = {"frames_per_segment": 8, "height": 64, "width": 96}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A work directory with a tiny stage-1 model and a chunks cache (what finetune and index read)."""
    import yaml

    from lfvila_cli.pipeline.artifacts import Workdir
    from lfvila_cli.stages import run_pipeline

    root = tmp_path_factory.mktemp("weights")
    stages = [
        ("prepare", {"source": "example", "example": SIZE}),
        ("cache", FRAMES),
        ("pretrain1", {"train": {"micro_batch": 2, "max_steps": 1}, "val_every": 0}),
        ("cache", {**FRAMES, "segment_mode": "chunks", "num_chunks": 4}),
    ]
    (root / "p.yaml").write_text(yaml.safe_dump({"stages": [{"stage": s, "config": c} for s, c in stages]}))
    wd = Workdir(root / "wd")
    results = run_pipeline(wd, root / "p.yaml", progress=False, echo=lambda line: None)
    assert [r.status for r in results] == ["done"] * 4
    return wd, results[2].artifact.path, results[3].artifact.path


DAMAGE = ["truncated", "empty", "garbage"]


def damage_file(path: Path, damage: str) -> None:
    good = path.read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2], "empty": b"", "garbage": random.Random(0).randbytes(len(good))}[damage])


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["finetune", "export", "index"])
def test_damaged_model_weights_are_a_one_line_error(pretrained, command, damage):
    """Through the CLI on a store artifact (the store's checksum check may speak first: either
    way one line naming the file)."""
    from typer.testing import CliRunner

    from lfvila_cli.main import app

    wd, model_dir, chunks = pretrained
    weights_file = model_dir / "model.safetensors"
    good = weights_file.read_bytes()
    damage_file(weights_file, damage)
    args = {
        "finetune": ["finetune", "--task", "didemo", "--init", str(model_dir), "--cache", str(chunks), "--set", "train.max_steps=1"],
        "export": ["export", "--model", str(model_dir), "--set", "frames=32", "--set", "height=64", "--set", "width=96"],
        "index": ["index", "--cache", str(chunks), "--model", str(model_dir), "--set", "engine=torch"],
    }[command]
    try:
        out = CliRunner().invoke(app, args + ["--workdir", str(wd.root)], env={"LFVILA_DEBUG": ""})
    finally:
        weights_file.write_bytes(good)
    # The only other line a run may print: "finetune: resuming in ..." (an earlier case's failed
    # attempt left its partial artifact).
    lines = [line for line in out.output.splitlines() if line.strip() and ": resuming in " not in line]
    assert out.exit_code == 1 and len(lines) == 1, out.output
    assert lines[0].startswith("error: ") and "model.safetensors" in lines[0], out.output


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("reader", ["finetune", "export", "index"])
def test_damaged_model_weights_outside_the_store_are_a_one_line_error(pretrained, tmp_path, reader, damage):
    """What each command reads the weights with, on a model directory no manifest vouches for
    (copied out of the store, or made before manifests held checksums)."""
    import shutil

    from lfvila_cli.errors import ArtifactError
    from lfvila_cli.search import Encoder
    from lfvila_cli.model.pretrained import load_pretrained_into
    from lfvila_cli.model.pretrained import load_pretrained

    _, model_dir, _ = pretrained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("run"))
    model = load_pretrained(copy) if reader == "finetune" else None
    damage_file(copy / "model.safetensors", damage)
    read = {
        "finetune": lambda: load_pretrained_into(model, copy),
        "export": lambda: load_pretrained(copy),  # export_onnx's first step
        "index": lambda: Encoder("torch", copy),
    }[reader]
    with pytest.raises(ArtifactError) as err:
        read()
    assert str(err.value).startswith(f"{copy / 'model.safetensors'}: unreadable weights file, truncated or corrupt (")
    assert "\n" not in str(err.value)


def test_weights_of_another_model_are_a_one_line_error(pretrained, tmp_path):
    """A readable model.safetensors whose tensors do not fit config.json: one line naming the
    file and the first difference (torch's error lists every tensor over many lines)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from lfvila_cli.errors import ArtifactError
    from lfvila_cli.model.pretrained import load_pretrained

    _, model_dir, _ = pretrained
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("run"))
    state = load_file(str(copy / "model.safetensors"))
    name = sorted(state)[0]
    del state[name]
    save_file(state, str(copy / "model.safetensors"))
    with pytest.raises(ArtifactError) as err:
        load_pretrained(copy)
    message = str(err.value)
    assert message.startswith(f"{copy / 'model.safetensors'}: the weights do not fit the model config.json describes (")
    assert "\n" not in message and "Missing key" in message
