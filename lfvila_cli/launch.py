"""Running one command on several ranks through the DeepSpeed launcher.

``lfvila pretrain --num-gpus N`` (or ``--hostfile FILE``) re-executes the same command as
``python -m deepspeed.launcher.runner --num_gpus N --no_local_rank --module lfvila_cli.main
pretrain ...``: the launcher starts one process per GPU (per slot of each host in the hostfile,
through pdsh/ssh) with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, and
each process runs the command as one rank. A process that already has RANK or LOCAL_RANK in
its environment (started by torchrun, the ``deepspeed`` command or this module) never launches
again.

On a machine without CUDA the DeepSpeed launcher still starts N processes (its CPU accelerator
takes ``--num_gpus`` as the number of ranks on this host), which train over gloo: useful for
trying the multi-rank path; each rank then gets ``OMP_NUM_THREADS = cores // N`` unless set,
as torchrun does, since N ranks each using every core run several times slower.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .errors import ConfigError

MODULE = "lfvila_cli.main"
# DeepSpeed's hostfile format: "<host> slots=<n>" per line, '#' comments.
_HOSTFILE_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


def in_launched_rank(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a rank started by a launcher (torchrun, deepspeed, or srun with
    several tasks: ``pipeline/ranks.py``). A Slurm job array's task is not: it may launch."""
    from .pipeline.ranks import current_launch

    if "RANK" in env or "LOCAL_RANK" in env:
        return True
    launch = current_launch(env)
    return launch.kind == "srun" and launch.world_size > 1


def launcher_command(
    args: Sequence[str],
    *,
    num_gpus: Optional[int] = None,
    hostfile: Optional[str | Path] = None,
    master_port: Optional[int] = None,
    python: str = sys.executable,
) -> list[str]:
    """The DeepSpeed launcher command that runs ``python -m lfvila_cli.main ARGS`` on every rank.

    ``--no_local_rank``: ranks read LOCAL_RANK from the environment instead of a
    ``--local_rank=N`` argument. Without ``master_port`` DeepSpeed uses 29500.
    """
    cmd = [python, "-m", "deepspeed.launcher.runner"]
    if hostfile is not None:
        cmd += ["--hostfile", str(hostfile)]
    if num_gpus is not None:
        cmd += ["--num_gpus", str(num_gpus)]
    if master_port is not None:
        cmd += ["--master_port", str(master_port)]
    return cmd + ["--no_local_rank", "--module", MODULE, *args]


def check_launch_options(num_gpus: Optional[int], hostfile: Optional[str | Path], master_port: Optional[int]) -> None:
    """One-line errors for launch options the launcher would reject late or silently ignore."""
    if num_gpus is None and hostfile is None:
        if master_port is not None:
            raise ConfigError("--master-port is for a launch: give --num-gpus N or --hostfile FILE too")
        return
    if num_gpus is not None and num_gpus < 1:
        raise ConfigError(f"--num-gpus must be >= 1, got {num_gpus}")
    if master_port is not None and not 1 <= master_port <= 65535:
        raise ConfigError(f"--master-port must be in 1..65535, got {master_port}")
    if hostfile is not None:
        check_hostfile(Path(hostfile))


def check_hostfile(path: Path) -> None:
    """The launcher falls back to this machine alone when the hostfile is missing: refuse instead."""
    if not path.is_file():
        raise ConfigError(f"--hostfile {path}: no such file")
    hosts = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not _HOSTFILE_LINE.match(line):
            raise ConfigError(f"{path}:{number}: expected '<host> slots=<n>', got {line!r}")
        hosts += 1
    if hosts == 0:
        raise ConfigError(f"--hostfile {path}: no hosts (one '<host> slots=<n>' line per machine)")


def launch_env(env: Mapping[str, str], num_gpus: Optional[int], cuda: bool, cores: int) -> dict[str, str]:
    """The launcher's environment: on a machine without CUDA, DeepSpeed's CPU accelerator
    (said outright, so no rank guesses) and a fair share of the cores per rank."""
    out = dict(env)
    if not cuda:
        out.setdefault("DS_ACCELERATOR", "cpu")
        out.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, num_gpus or 1))))
    return out


def launch(
    args: Sequence[str],
    *,
    num_gpus: Optional[int] = None,
    hostfile: Optional[str | Path] = None,
    master_port: Optional[int] = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run ``lfvila ARGS`` through the DeepSpeed launcher; return its exit status."""
    import torch

    check_launch_options(num_gpus, hostfile, master_port)
    cuda = torch.cuda.is_available()
    if cuda and hostfile is None and num_gpus is not None and num_gpus > torch.cuda.device_count():
        raise ConfigError(f"--num-gpus {num_gpus}: this machine has {torch.cuda.device_count()} GPU(s)")
    cmd = launcher_command(args, num_gpus=num_gpus, hostfile=hostfile, master_port=master_port)
    echo(f"launching: {shlex.join(cmd)}")
    env = launch_env(os.environ, num_gpus, cuda, os.cpu_count() or 1)
    return subprocess.call(cmd, env=env)
