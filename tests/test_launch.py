"""Launching `lfvila pretrain` on several ranks (lfvila_cli.launch): the DeepSpeed launcher
command, the one-line errors, and two CPU ranks started by torchrun and by `--num-gpus 2`."""

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers_ranks import free_port
from test_cli import invoke

from lfvila_cli.launch import in_launched_rank, launch_env, launcher_command

REPO = Path(__file__).resolve().parents[1]
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
QUICK = ["--set", "train.max_steps=2", "--set", "val_every=0", "--set", "train.micro_batch=1", "--set", "train.precision=fp32"]


@pytest.fixture
def single_process(monkeypatch):
    """No launcher variables, whatever earlier tests in this process set (the trainer sets
    RANK=0 for a single process), and no real launch."""
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    calls = []

    def call(cmd, env):
        calls.append((cmd, env))
        return call.code

    call.code = 0
    monkeypatch.setattr("lfvila_cli.launch.subprocess.call", call)
    return call, calls


# --------------------------------------------------------------------------- the command


def test_launcher_command_is_what_deepspeed_parses():
    from deepspeed.launcher.runner import parse_args

    args = ["pretrain", "--stage", "1", "--set", "train.max_steps=2"]
    cmd = launcher_command(args, num_gpus=8, python="py")
    assert cmd == ["py", "-m", "deepspeed.launcher.runner", "--num_gpus", "8", "--no_local_rank", "--module", "lfvila_cli.main", *args]
    full = launcher_command(args, num_gpus=2, hostfile=Path("hosts.txt"), master_port=29600)
    assert full[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    parsed = parse_args(full[3:])  # the launcher's own argument parser
    assert (parsed.num_gpus, parsed.hostfile, parsed.master_port) == (2, "hosts.txt", 29600)
    assert parsed.module and parsed.no_local_rank and parsed.user_script == "lfvila_cli.main" and parsed.user_args == args
    only_hosts = parse_args(launcher_command(args, hostfile="h")[3:])
    assert only_hosts.num_gpus == -1 and only_hosts.hostfile == "h"  # every slot of every host


def test_launch_env_and_rank_detection():
    cpu = launch_env({"PATH": "/bin"}, 2, cuda=False, cores=8)
    assert cpu == {"PATH": "/bin", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "4"}
    assert launch_env({"OMP_NUM_THREADS": "3"}, 4, cuda=False, cores=2)["OMP_NUM_THREADS"] == "3"
    assert launch_env({}, 4, cuda=False, cores=2)["OMP_NUM_THREADS"] == "1"
    assert launch_env({"PATH": "/bin"}, 2, cuda=True, cores=8) == {"PATH": "/bin"}
    assert not in_launched_rank({"WORLD_SIZE": "2"})
    assert in_launched_rank({"RANK": "1"}) and in_launched_rank({"LOCAL_RANK": "0"})


def test_launch_mistakes_are_one_line_and_launch_nothing(tmp_path, single_process):
    _, calls = single_process
    bad = tmp_path / "bad_hosts.txt"
    bad.write_text("# two machines\nnode-1 slots=8\nnode-2 8\n")
    empty = tmp_path / "empty_hosts.txt"
    empty.write_text("# nobody\n\n")
    for args, fragment in [
        (["--num-gpus", "0"], "--num-gpus must be >= 1, got 0"),
        (["--hostfile", tmp_path / "hosts.txt"], f"--hostfile {tmp_path / 'hosts.txt'}: no such file"),
        (["--hostfile", bad], f"{bad}:3: expected '<host> slots=<n>', got 'node-2 8'"),
        (["--hostfile", empty], "no hosts"),
        (["--master-port", "29600"], "--master-port is for a launch"),
        (["--num-gpus", "2", "--master-port", "70000"], "--master-port must be in 1..65535"),
        (["--num-gpus", "2", "--force"], "--force under a multi-rank launch would race"),
    ]:
        result = invoke("pretrain", "--workdir", tmp_path / "wd", *args)
        assert result.exit_code == 2, (args, result.output)
        assert fragment in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert calls == []


def test_more_gpus_than_the_machine_has(tmp_path, single_process, monkeypatch):
    _, calls = single_process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = invoke("pretrain", "--workdir", tmp_path, "--num-gpus", "8")
    assert result.exit_code == 2 and result.output.strip() == "error: --num-gpus 8: this machine has 2 GPU(s)"
    assert invoke("pretrain", "--workdir", tmp_path, "--num-gpus", "2").exit_code == 0
    (cmd, env), = calls
    assert "--num_gpus" in cmd and env == dict(os.environ)  # on GPUs the environment is passed as it is


def test_num_gpus_reruns_the_same_command_through_the_launcher(tmp_path, single_process, monkeypatch):
    call, calls = single_process
    wd = tmp_path / "wd"
    call.code = 3  # a rank failed: the launcher's status is the command's
    result = invoke("pretrain", "--stage", "2", "--num-gpus", "2", "--master-port", "29600", "--workdir", wd,
                    "--set", "train.max_steps=2", "-s", "val_every=0", "--name", "run-a")
    assert result.exit_code == 3, result.output
    (cmd, env), = calls
    assert cmd == launcher_command(
        ["pretrain", "--stage", "2", "--workdir", str(wd), "--set", "train.max_steps=2", "--set", "val_every=0", "--name", "run-a"],
        num_gpus=2, master_port=29600,
    )
    assert result.output.splitlines()[0] == "launching: " + shlex.join(cmd)
    assert env["DS_ACCELERATOR"] == os.environ.get("DS_ACCELERATOR", "cpu") and int(env["OMP_NUM_THREADS"]) >= 1

    # The work directory from $LFVILA_WORKDIR is passed on explicitly (pdsh does not export it).
    call.code = 0
    monkeypatch.setenv("LFVILA_WORKDIR", str(wd))
    hosts = _hostfile(tmp_path)
    assert invoke("pretrain", "--hostfile", hosts).exit_code == 0
    assert calls[-1][0] == launcher_command(["pretrain", "--workdir", str(wd)], hostfile=hosts)

    # --dry-run shows the launch and answers in this process.
    dry = invoke("pretrain", "--num-gpus", "2", "--workdir", wd, "--dry-run")
    assert dry.output.startswith("would launch: ") and "--dry-run" in dry.output.splitlines()[0]
    assert len(calls) == 2


def test_inside_a_launched_rank_the_options_are_ignored(tmp_path, single_process):
    _, calls = single_process
    result = invoke("pretrain", "--num-gpus", "2", "--workdir", tmp_path, env={"RANK": "0"})
    # It ran here, as one rank: the work directory has no cache yet.
    assert result.exit_code == 1 and result.output.strip() == f"error: no 'cache' artifact in {tmp_path}: run `lfvila cache` first"
    assert calls == []


def _hostfile(tmp_path):
    path = tmp_path / "hosts.txt"
    path.write_text("# DeepSpeed hostfile\nlocalhost slots=2\n")
    return path


# --------------------------------------------------------------------------- two CPU ranks


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A work directory holding a tiny example corpus (4 train videos) and its frame cache."""
    wd = tmp_path_factory.mktemp("launch") / "wd"
    sizes = ["--set", "example.train_videos=4", "--set", "example.val_videos=1", "--set", "example.test_videos=0", "--set", "example.max_clips=4"]
    assert invoke("prepare", "--workdir", wd, *sizes).exit_code == 0
    assert invoke("cache", "--workdir", wd, "--set", "height=64", "--set", "width=96").exit_code == 0
    return wd


def rank_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    # A rank that fails must not leave the others waiting an hour for rank 0's commit.
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu", LFVILA_RANK_WAIT_S="120", **extra)
    return env


def finished_run(wd: Path, ref: str):
    from lfvila_cli.pipeline.artifacts import Workdir

    artifact = Workdir(wd).resolve("pretrain1", ref)
    train_config = json.loads((artifact.path / "run" / "train_config.json").read_text())
    return artifact, train_config


# Runs the CLI as a rank and saves the rank's weights after training, so the test can compare ranks.
RANK_WRAPPER = textwrap.dedent(
    """
    import os, sys, torch
    import lfvila_cli.train.engine as engine
    from lfvila_cli.main import main

    train = engine.Trainer.train

    def train_and_save(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        torch.save(self.engine.module.state_dict(), os.path.join({out!r}, f"rank{{self.rank}}.pt"))
        return result

    engine.Trainer.train = train_and_save
    main()
    """
)


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_cpu_ranks_agree(workdir, tmp_path):
    from lfvila_cli.pipeline.artifacts import Workdir
    from lfvila_cli.model.pretrained import load_weights

    wrapper = tmp_path / "rank.py"
    wrapper.write_text(RANK_WRAPPER.format(out=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(wrapper),
           "pretrain", "--stage", "1", "--workdir", str(workdir), "--name", "torchrun", *QUICK]
    run = subprocess.run(cmd, env=rank_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("pretrain1: done") == 1 and "pretrain1: rank 1/2" in run.stdout
    artifact, train_config = finished_run(workdir, "torchrun")
    assert train_config["world_size"] == 2 and artifact.summary["steps"] == 2
    assert [a.key for a in Workdir(workdir).artifacts("pretrain1")] == [artifact.key]  # rank 0 committed once
    # validation shared by the two ranks still covers the whole val split
    assert artifact.summary["val_samples"] >= 2 and artifact.summary["val"]["num_videos"] == artifact.summary["val_samples"]

    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    saved = load_weights(artifact.path / "model.safetensors")
    assert first.keys() == second.keys() and set(saved) <= set(first)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    for name in saved:
        assert torch.equal(saved[name], first[name].float()), name


@pytest.mark.distributed
@pytest.mark.slow
def test_num_gpus_2_without_cuda_runs_two_cpu_ranks(workdir):
    """The DeepSpeed launcher on a machine without CUDA: `--num-gpus 2` is two gloo ranks."""
    cmd = [sys.executable, "-m", "lfvila_cli.main", "pretrain", "--stage", "1", "--workdir", str(workdir),
           "--num-gpus", "2", "--master-port", str(free_port()), "--name", "deepspeed", *QUICK, "--set", "train.seed=1"]
    run = subprocess.run(cmd, env=rank_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    first = run.stdout.splitlines()[0]
    assert first.startswith("launching: ") and "deepspeed.launcher.runner --num_gpus 2" in first and "--num-gpus" not in first
    assert run.stdout.count("pretrain1: done") == 1 and "pretrain1: rank 1/2" in run.stdout
    artifact, train_config = finished_run(workdir, "deepspeed")
    assert train_config["world_size"] == 2 and artifact.summary["steps"] == 2
