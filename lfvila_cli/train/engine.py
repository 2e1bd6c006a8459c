"""The trainer core over the DeepSpeed engine (model-agnostic; docs/method.md §5 recipe).

``Trainer(model, loss_fn, cfg, run_dir).train(batches, steps_per_epoch, resume="auto")`` runs
forward / backward / step with DeepSpeed (ZeRO 1 or 2, fp32 / bf16 / fp16), AdamW with no weight
decay on biases, norms and position tables, linear warm-up then linear decay to
``final_lr_ratio`` of the peak, a NaN/Inf check before every optimizer step, metrics as JSON Lines
and checkpoints that count only once their completion marker is written. Checkpoints are read
with ``torch.load(weights_only=True)`` only (see ``checkpoint``); resuming falls back from a
complete checkpoint with a truncated or corrupt file to the previous one.

Bad steps: a micro-batch whose total loss is NaN/Inf is not back-propagated through the model;
instead every trainable gradient is set to NaN, so that ZeRO's overflow check (which runs on the
reduced gradients before the update, also catching a finite loss with an Inf/NaN gradient) skips
the whole optimizer step on every rank: no parameter update, optimizer state untouched. Skipped
steps still advance the step counter, the data position and the LR schedule.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from ..config import to_dict
from ..errors import CheckpointError, ConfigError, LfvilaError, UnsafeCheckpointError
from ..progress import ProgressLog, duration
from . import checkpoint as ckpt
from .config import TrainConfig
from .events import TENSORBOARD_DIR, EventWriter, require_tensorboard
from .schedule import lr_factor, parameter_groups

log = logging.getLogger(__name__)

LossFn = Callable[[Any, Any, int], Mapping[str, torch.Tensor]]
# batches(epoch, start) -> iterable of micro-batches of that epoch, beginning at micro-batch
# index ``start`` (the data position saved in the checkpoint).
BatchSource = Callable[[int, int], Iterable[Any]]


def check_precision_supported(cfg: TrainConfig) -> None:
    """fp16 needs a GPU: DeepSpeed refuses it on the CPU accelerator."""
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("config key 'train.precision': fp16 needs a GPU (DeepSpeed refuses it on CPU); use bf16 or fp32")


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed JSON for ``cfg`` (saved with the run as ``deepspeed_config.json``).

    The optimizer is a torch AdamW passed to ``deepspeed.initialize`` (no JIT-built fused/CPU
    Adam), hence ``zero_allow_untested_optimizer``; the LR is set by the trainer each step.
    """
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": cfg.precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,  # our own metrics replace DeepSpeed's progress lines
        "wall_clock_breakdown": False,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Prepare DeepSpeed's process group (idempotent). Where no launcher set the rendezvous
    variables (a plain ``lfvila pretrain``), set those of a single process, so DeepSpeed never
    falls back to MPI discovery. Without CUDA: accelerator ``cpu``, no JIT build of the
    shared-memory comm op (only used for inference all-reduce), and gloo; with CUDA: nccl."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed

    if not cuda:
        import deepspeed.comm.torch  # noqa: F401  (so that sys.modules holds it)

        # Through sys.modules: ``import deepspeed.comm.torch as m`` would bind torch itself.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


@dataclass
class TrainResult:
    steps: int
    bad_steps: int
    last_checkpoint: Optional[Path]
    losses: list[float]  # total loss of each step run by this call (rank mean)


class Trainer:
    """Runs the docs/method.md §5 recipe for ``model`` with ``loss_fn(engine, batch, step) -> {"total": ..,
    term: ..}`` in ``run_dir`` (metrics.jsonl, checkpoints/, the configs).

    Trainable parameters are those with ``requires_grad`` when the Trainer is built (call e.g.
    ``model.set_trainable("stage2")`` first). ``generators`` are extra torch Generators whose
    state is checkpointed per rank (e.g. the MTC sampling generator).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        cfg: TrainConfig,
        run_dir: str | Path,
        generators: Optional[Mapping[str, torch.Generator]] = None,
    ) -> None:
        check_precision_supported(cfg)
        require_tensorboard(cfg)
        init_distributed()
        import deepspeed
        import deepspeed.comm as dist

        self.cfg = cfg
        self.loss_fn = loss_fn
        self.run_dir = Path(run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.generators = dict(generators or {})
        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        groups = parameter_groups(model.named_parameters(), cfg.weight_decay)
        if not groups:
            raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
        self.trainable = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "names"} for g in groups],
            lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
        )
        self.ds_config = deepspeed_config(cfg, self.world_size)
        started = time.perf_counter()
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        self.init_seconds = time.perf_counter() - started
        # DeepSpeed's own engine unpickles whatever a checkpoint file holds (weights_only=False).
        self.engine.checkpoint_engine = ckpt.checkpoint_engine()
        # Check the reduced gradients for Inf/NaN before every update, in every precision.
        self.optimizer.check_grad_overflow = True
        self.step = 0
        self.epoch = 0
        self.position = 0  # micro-batch index inside the epoch
        self.bad_steps = 0
        self.last_checkpoint: Optional[Path] = ckpt.latest_complete(self.ckpt_root)
        self.events: Optional[EventWriter] = None  # rank 0 with train.tensorboard, from train() on

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Save at the current step; the marker is written once every rank has finished. A failed
        write (a full disk) is a ``CheckpointError`` naming the file; the folder stays unmarked."""
        tag = ckpt.tag_for(self.step)
        client_state = {
            "step": self.step, "epoch": self.epoch, "position": self.position,
            "bad_steps": self.bad_steps, "world_size": self.world_size,
        }
        path = self.ckpt_root / tag
        try:
            # Tensor files fail as CheckpointError in our engine; this catches DeepSpeed's other
            # writes (its recovery scripts are copied in).
            self.engine.save_checkpoint(str(self.ckpt_root), tag=tag, client_state=client_state, save_latest=False)
        except OSError as exc:
            raise CheckpointError(f"{exc.filename or path}: cannot write the checkpoint ({exc.strerror or exc})") from exc
        ckpt.save_rng(path, self.rank, self.generators)
        self.dist.barrier()
        if self.rank == 0:
            ckpt.mark_complete(path, client_state)
            ckpt.prune(self.ckpt_root, self.cfg.keep_last_k)
        self.dist.barrier()
        self.last_checkpoint = path
        return path

    def resume(self, path: Optional[str | Path] = "auto") -> Optional[Path]:
        """Load ``path`` or, with "auto", the newest complete checkpoint whose files are all
        readable (None if there is none): one with a truncated or corrupt file is skipped with a
        warning naming the file (and loses its marker, so it is saved anew). A file holding
        objects other than tensors and plain data stops the run (``UnsafeCheckpointError``)."""
        if path == "auto":
            path = self._newest_loadable()
            if path is None:
                return None
        else:
            path = Path(path)
            if not (path / ckpt.MARKER).is_file():
                raise LfvilaError(f"{path}: checkpoint is incomplete (no {ckpt.MARKER} marker)")
            problem = self._check_on_every_rank(path)
            if problem is not None:
                raise CheckpointError(problem)
        with ckpt.weights_only_loading():
            load_path, state = self.engine.load_checkpoint(
                str(path.parent), tag=path.name, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        if load_path is None:
            raise LfvilaError(f"{path}: DeepSpeed could not load this checkpoint")
        if state["world_size"] != self.world_size:
            log.warning("resuming a %d-rank checkpoint on %d ranks: data order will differ", state["world_size"], self.world_size)
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.bad_steps = state["bad_steps"]
        ckpt.load_rng(path, min(self.rank, state["world_size"] - 1), self.generators)
        self.last_checkpoint = path
        if self.rank == 0:
            self._truncate_metrics(self.step)
        log.info("resumed from %s at step %d (epoch %d, micro-batch %d)", path, self.step, self.epoch, self.position)
        return path

    def _newest_loadable(self) -> Optional[Path]:
        """The newest complete checkpoint every rank can load (None if there is none); damaged
        ones on the way are skipped with a warning and lose their marker."""
        done = ckpt.list_checkpoints(self.ckpt_root)
        damaged: list[Path] = []
        for index in range(len(done) - 1, -1, -1):
            problem = self._check_on_every_rank(done[index])
            if problem is None:
                break
            if index == 0:
                raise CheckpointError(
                    f"no loadable checkpoint: all {len(done)} complete ones in {self.ckpt_root} are damaged (oldest: {problem})"
                )
            log.warning("%s; resuming from the previous complete checkpoint instead", problem)
            damaged.append(done[index])
        else:
            return None
        if damaged:
            if self.rank == 0:
                # Their steps are trained again: without its marker, a crash during the new save
                # of the same step cannot leave a "complete" folder of mixed files.
                for path in damaged:
                    (path / ckpt.MARKER).unlink(missing_ok=True)
            self.dist.barrier()
        return done[index]

    def _check_on_every_rank(self, path: Path) -> Optional[str]:
        """None when every rank finds ``path`` loadable (``ckpt.verify``), else the problem; the
        ranks agree before any of them starts DeepSpeed's load (which has collectives)."""
        code, problem, refused = 0, None, None
        try:
            ckpt.verify(path)
        except UnsafeCheckpointError as exc:
            code, problem, refused = 2, str(exc), exc
        except CheckpointError as exc:
            code, problem = 1, str(exc)
        if self.world_size > 1:
            worst = torch.tensor([code], dtype=torch.int32, device=self.engine.device)
            self.dist.all_reduce(worst, op=self.dist.ReduceOp.MAX)
            worst_code = int(worst.item())
        else:
            worst_code = code
        if worst_code == 2:
            raise refused or UnsafeCheckpointError(f"{path}: refused by another rank (a file holds objects other than tensors; see its log)")
        if worst_code == 1 and problem is None:
            problem = f"{path}: a file is missing or unreadable on another rank (see its log)"
        return problem

    # ------------------------------------------------------------------ loop
    def train(self, batches: BatchSource, steps_per_epoch: int, resume: Optional[str] = None) -> TrainResult:
        """Train until ``cfg.epochs`` (or ``cfg.max_steps``) optimizer steps are done.

        An epoch is ``steps_per_epoch`` optimizer steps of ``grad_accum`` micro-batches taken from
        ``batches(epoch, start)``; an epoch whose iterator ends early ends there (a trailing
        partial accumulation group is dropped). A checkpoint is saved every ``checkpoint_every``
        steps and at the end.
        """
        cfg = self.cfg
        if steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        total = cfg.total_steps(steps_per_epoch)
        warmup = cfg.resolved_warmup_steps(steps_per_epoch)
        if resume is None or self.resume(resume) is None:
            self._seed_everything()
        if self.rank == 0:
            self._write_run_files(total, warmup, steps_per_epoch)
            if cfg.tensorboard and self.events is None:
                self.events = EventWriter(self.run_dir / TENSORBOARD_DIR, self.step, self._read_metrics())

        per_epoch = steps_per_epoch * cfg.grad_accum
        losses: list[float] = []
        bar = self._progress(total)
        # Off a terminal (no bar) rank 0 logs the bar's figures every interval instead.
        lines = ProgressLog(total, enabled=self.rank == 0 and bar is None, done=self.step)
        record = None
        saved_at = self.step if self.last_checkpoint is not None and ckpt._step_of(self.last_checkpoint) == self.step else None
        while self.step < total:
            micro = iter(batches(self.epoch, self.position))
            while self.step < total and self.position < per_epoch:
                group = list(itertools.islice(micro, cfg.grad_accum))
                if len(group) < cfg.grad_accum:
                    break
                record = self._train_step(group, lr_factor(self.step, warmup, total, cfg.final_lr_ratio) * cfg.lr)
                losses.append(record["loss/total"])
                self.position += cfg.grad_accum
                self.step += 1
                if self.rank == 0 and (self.step % cfg.log_every == 0 or self.step == total):
                    self._log(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"loss": f"{record['loss/total']:.4f}", "samples/s": f"{record['samples_per_s']:.1f}"})
                if lines.advance(1) and self.step < total:
                    lines.log("train: step %s, %s, about %s left", lines.counted(), self._figures(record, lines), lines.left())
                if not record["step_applied"]:
                    self._on_bad_step()
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                    saved_at = self.step
            if self.step < total:
                self.epoch += 1
                self.position = 0
        if saved_at != self.step:
            self.save()
        if bar is not None:
            bar.close()
        if lines.enabled and record is not None:
            lines.log("train: step %s, %s, done in %s", lines.counted(), self._figures(record, lines), duration(lines.elapsed))
        return TrainResult(steps=self.step, bad_steps=self.bad_steps, last_checkpoint=self.last_checkpoint, losses=losses)

    def _train_step(self, group: list, lr: float) -> dict:
        started = time.perf_counter()
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        sums: dict[str, float] = {}
        for batch in group:
            out = self.loss_fn(self.engine, batch, self.step)
            if "total" not in out:
                raise LfvilaError("loss_fn must return a dict with a 'total' loss")
            total = out["total"]
            if bool(torch.isfinite(total.detach()).all()):
                self.engine.backward(total)
            else:
                # Checked before backward: nothing flows through the model; NaN gradients make
                # ZeRO's overflow check skip this optimizer step on every rank.
                self.engine.backward(self._poisoned_loss())
            self.engine.step()
            for name, value in out.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach().float())
        applied = bool(self.engine.was_step_applied())
        grad_norm = self.engine.get_global_grad_norm()
        terms = self._rank_mean({k: v / len(group) for k, v in sums.items()})
        seconds = time.perf_counter() - started
        record: dict[str, Any] = {"step": self.step + 1, "epoch": self.epoch, "lr": lr}
        record.update({f"loss/{k}": v for k, v in terms.items()})
        record.update(
            grad_norm=float(grad_norm) if grad_norm is not None else None,
            samples_per_s=self.cfg.micro_batch * len(group) * self.world_size / max(seconds, 1e-9),
            step_applied=applied,
            skipped_steps=self.bad_steps + (0 if applied else 1),
        )
        return record

    def _poisoned_loss(self) -> torch.Tensor:
        return sum(p.sum() for p in self.trainable) * float("nan")

    def _on_bad_step(self) -> None:
        self.bad_steps += 1
        log.warning("step %d skipped: non-finite loss or gradient norm (%d so far)", self.step, self.bad_steps)
        if self.bad_steps > self.cfg.max_bad_steps:
            where = self.last_checkpoint if self.last_checkpoint is not None else "none saved yet"
            raise LfvilaError(
                f"training stopped at step {self.step}: {self.bad_steps} steps had a non-finite loss or gradient "
                f"(budget train.max_bad_steps={self.cfg.max_bad_steps}); last good checkpoint: {where}"
            )

    def _rank_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world_size == 1:
            return values
        names = sorted(values)
        # on the engine's device: NCCL reduces CUDA tensors only
        tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=self.engine.device)
        self.dist.all_reduce(tensor)
        return {n: float(v) / self.world_size for n, v in zip(names, tensor.tolist())}

    # ------------------------------------------------------------------ bookkeeping
    def _seed_everything(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def _write_run_files(self, total: int, warmup: int, steps_per_epoch: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "deepspeed_config.json").write_text(json.dumps(self.ds_config, indent=2) + "\n", encoding="utf-8")
        plan = {"total_steps": total, "warmup_steps": warmup, "steps_per_epoch": steps_per_epoch, "world_size": self.world_size}
        (self.run_dir / "train_config.json").write_text(json.dumps({**to_dict(self.cfg), **plan}, indent=2) + "\n", encoding="utf-8")

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            # NaN/Inf are not JSON: a skipped step logs its bad loss as null.
            clean = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in record.items()}
            f.write(json.dumps(clean) + "\n")
        if self.events is not None:
            self.events.train(record)

    def _truncate_metrics(self, step: int) -> None:
        """Drop records past the resumed step (written by the run that died after its last save)."""
        kept = [record for record in self._read_metrics() if record["step"] <= step]
        (self.run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")

    def _read_metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _figures(self, record: dict, lines: ProgressLog) -> str:
        """A progress line's figures: the step record's losses (the terms the loss returned, in its
        order) and lr, then samples/s over this run so far (data loading and validation included,
        the pace the time left assumes; one step's ``samples_per_s`` swings with each batch) and
        the skipped steps if any: ``loss 3.21 (vpc 1.2, mtc 0.9), lr 1.20e-04, 5.3 samples/s``."""
        terms = ", ".join(f"{k[len('loss/'):]} {v:.4g}" for k, v in record.items() if k.startswith("loss/") and k != "loss/total")
        text = f"loss {record['loss/total']:.4g}" + (f" ({terms})" if terms else "")
        samples = (lines.done - lines.first) * self.cfg.micro_batch * self.cfg.grad_accum * self.world_size
        text += f", lr {record['lr']:.2e}, {lines.per_second(samples):.1f} samples/s"
        if record["skipped_steps"]:
            text += f", {record['skipped_steps']} steps skipped"
        return text

    def _progress(self, total: int):
        if self.rank != 0 or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True)

