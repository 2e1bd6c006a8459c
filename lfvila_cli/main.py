"""The ``lfvila`` command line: thin Typer commands over library functions.

Heavy libraries (torch, decord, zarr, transformers, deepspeed) are imported inside the
commands, so ``lfvila --help`` answers instantly. A user error prints one line and exits
non-zero; ``LFVILA_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shlex
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="lfvila",
    help="Long-form video-language pre-training (LF-VILA) as reproducible, cached stages.\n\n"
    "Quickstart: lfvila run stages/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

PRECISION_HELP = (
    "The config key precision: auto (the default: bf16 where the hardware computes it natively, a GPU of compute "
    "capability 8.0+ or a CPU with AVX512-BF16 or AMX; else fp32), bf16 or fp32."
)
WorkdirOpt = typer.Option(Path("lfvila-work"), "--workdir", "-w", envvar="LFVILA_WORKDIR", help="Work directory holding the artifact store and refs.")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file(s) for this stage, applied in order over the defaults.")
SetOpt = typer.Option(None, "--set", "-s", help="Override one config key of this stage, KEY=VALUE (repeatable); see the examples above.")
ForceOpt = typer.Option(False, "--force", help="Rerun even if an artifact with the same key exists.")
DryRunOpt = typer.Option(False, "--dry-run", help="Show whether the stage would run or is up to date; do no work.")
NameOpt = typer.Option(None, "--name", help="Also record the artifact under this ref name (besides 'latest').")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Log progress details (INFO level).")
ShowConfigOpt = typer.Option(False, "--show-config", help="Print the resolved config (defaults, --config files, options, --set) as YAML and exit; nothing runs.")


def _stage_help(stage_name: str) -> type:
    """A command class whose ``--help`` ends with the stage's config keys and their defaults,
    read from its config dataclass when help is asked for (so ``lfvila --help`` stays instant and
    the list never disagrees with the code)."""
    from typer.core import TyperCommand

    class StageCommand(TyperCommand):
        def format_epilog(self, ctx, formatter) -> None:
            from .config import config_keys
            from .stages import get_stage

            stage = get_stage(stage_name)
            marked = "; * = not part of the artifact key" if stage.policy_fields else ""
            with formatter.section(f"Config keys, with their defaults (--set KEY=VALUE{marked}; --show-config prints them resolved)"):
                for group, keys in config_keys(stage.config_class, stage.policy_fields, leave_out=stage.fixed):
                    formatter.write_text(f"{group}.*: {keys}" if group else keys)
            super().format_epilog(ctx, formatter)

    return StageCommand


@dataclass
class StageOptions:
    """The options every stage command shares, declared once (``stage_command``)."""

    workdir: Path
    config: list[Path]
    overrides: list[str]  # --set KEY=VALUE
    force: bool
    dry_run: bool
    name: Optional[str]
    verbose: bool
    show_config: bool = False


_SHARED = (  # (parameter, type, option): appended to each stage command's own options
    ("workdir", Path, WorkdirOpt),
    ("config", Optional[List[Path]], ConfigOpt),
    ("set_", Optional[List[str]], SetOpt),
    ("force", bool, ForceOpt),
    ("dry_run", bool, DryRunOpt),
    ("name", Optional[str], NameOpt),
    ("verbose", bool, VerboseOpt),
    ("show_config", bool, ShowConfigOpt),
)


def stage_command(func):
    """A stage command: ``func`` declares only its own options and takes the shared ones as one
    ``opts: StageOptions`` argument; logging is set up before it runs."""
    signature = inspect.signature(func)
    own = [p for p in signature.parameters.values() if p.name != "opts"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind) for name, kind, option in _SHARED]

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name, _, _ in _SHARED}
        opts = StageOptions(
            workdir=values["workdir"], config=list(values["config"] or []), overrides=list(values["set_"] or []),
            force=values["force"], dry_run=values["dry_run"], name=values["name"], verbose=values["verbose"],
            show_config=values["show_config"],
        )
        _setup_logging(opts.verbose)
        return func(*args, opts=opts, **kwargs)

    hints = {k: v for k, v in typing.get_type_hints(func).items() if k not in ("opts", "return")}
    wrapper.__annotations__ = {**hints, **{name: kind for name, kind, _ in _SHARED}}
    wrapper.__signature__ = signature.replace(
        parameters=[p.replace(annotation=hints.get(p.name, p.annotation)) for p in own] + shared
    )
    del wrapper.__wrapped__  # Typer reads the signature above, not the function's own
    return wrapper


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _debug_fail(code: int) -> None:
    """LFVILA_DEBUG=1: the traceback, then the exit status the one-line error would have had."""
    import traceback

    traceback.print_exc()
    raise typer.Exit(code)


def _pipe_closed() -> None:
    """The reader of our output went away (``lfvila search ... | head -1``): stop quietly with the
    status a shell gives a command killed by SIGPIPE (128 + 13). Output still buffered for the
    closed pipe goes to /dev/null, so the interpreter's last flush does not complain either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(141)


def command(func):
    """Turn library errors into one line + exit code (with LFVILA_DEBUG=1, the traceback and the
    same exit code)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from .errors import LfvilaError

        debug = os.environ.get("LFVILA_DEBUG", "") not in ("", "0")
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except LfvilaError as exc:
            if debug:
                _debug_fail(exc.exit_code)
            _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, exc.exit_code)
        except KeyboardInterrupt:
            if debug:
                _debug_fail(130)
            _fail("interrupted; completed work is kept, rerun to resume", 130)
        except BrokenPipeError:
            _pipe_closed()
        except OSError as exc:  # a path the user gave: a file where a directory should be, no permission...
            if debug:
                _debug_fail(1)
            where = exc.filename or ""
            _fail(f"{where}: {exc.strerror or exc}" if where else str(exc), 1)
        except ImportError as exc:  # e.g. an s3:// URL without s3fs installed
            if debug:
                _debug_fail(1)
            _fail(f"missing package: {exc}", 1)

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Progress lines of long work (e.g. each cache rank's) show without --verbose: off a terminal
    # they are the only progress a scheduler's log gets.
    logging.getLogger("lfvila_cli.progress").setLevel(logging.INFO)


# Options renamed so that one name means one thing in every command; the old spelling works,
# with a warning, until this release.
RENAMED_UNTIL = "0.3"


def _renamed(command_name: str, old: str, new: str, value):
    typer.echo(f"warning: `lfvila {command_name} {old}` is now `{new}` (the same meaning as in the other commands); {old} stops working in {RENAMED_UNTIL}", err=True)
    return value


def _echo_config(cfg, title: Optional[str] = None) -> None:
    import yaml

    from .config import to_dict

    if title:
        typer.echo(f"# {title}")
    typer.echo(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True).rstrip())


def _progress() -> bool:
    return sys.stderr.isatty()


def _run_single(stage_name: str, opts: StageOptions, overrides: list[str], refs: dict[str, str]) -> None:
    """Run one stage: its config from the defaults, ``--config`` files, the command's own options
    (``overrides``, before ``--set``), and ``--set``; its inputs by the input rule (``refs``: the
    command's artifact options)."""
    from .pipeline.artifacts import Workdir
    from .pipeline.chain import check_stage, pick_inputs
    from .pipeline.runner import run_stage
    from .pipeline.stage import resolve_config
    from .stages import get_stage

    stage = get_stage(stage_name)
    cfg = resolve_config(stage, files=opts.config, overrides=[*overrides, *opts.overrides])
    if opts.show_config:
        _echo_config(cfg)
        return
    wd = Workdir(opts.workdir)
    inputs = pick_inputs(wd, stage, cfg, refs=refs)
    check_stage(wd, stage, cfg, inputs)  # before any work, and what --dry-run reports
    run_stage(wd, stage, cfg, inputs, force=opts.force, dry_run=opts.dry_run, name=opts.name, progress=_progress(), echo=typer.echo)


@app.command(cls=_stage_help("prepare"))
@command
@stage_command
def prepare(
    source: Optional[str] = typer.Option(
        None, "--source",
        help="example | hdvila | activitynet | didemo | queryd | cmd | how2qa | violin | anet-qa | lfvila-jsonl | jsonl (shortcut for --set source=...).",
    ),
    task: Optional[str] = typer.Option(None, "--task", help="--source lfvila-jsonl: retrieval | how2qa | violin | anet-qa, the shape of the authors' files (shortcut for --set lfvila_jsonl.task=...)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on any rejected record instead of counting it in stats.json."),
    *,
    opts: StageOptions,
) -> None:
    """Build the corpus (samples.jsonl + stats.json) from a source: long-form paragraphs for
    pre-training and retrieval, or QA items for the QA tasks.

    Examples:

      lfvila prepare --source example

      lfvila prepare --source example --set example.task=how2qa

      lfvila prepare --source hdvila --set hdvila.metadata='hdvila_part*.jsonl' --set hdvila.text=asr.jsonl --set hdvila.video_root=s3://bucket/clips

      lfvila prepare --source activitynet --set activitynet.annotations=captions/ --set activitynet.video_root=videos/

      lfvila prepare --source didemo --set didemo.annotations=didemo/ --set didemo.video_root=videos/

      lfvila prepare --source queryd --set queryd.annotations=QuerYD/ --set queryd.video_root=videos/

      lfvila prepare --source cmd --set cmd.annotations=CondensedMovies/metadata --set cmd.video_root=videos/

      lfvila prepare --source how2qa --set how2qa.annotations=how2qa/ --set how2qa.video_root=videos/

      lfvila prepare --source violin --set violin.annotations=violin/ --set violin.video_root=videos/

      lfvila prepare --source anet-qa --set anet_qa.annotations=activitynet-qa/ --set anet_qa.video_root=videos/

      lfvila prepare --source lfvila-jsonl --task how2qa --set lfvila_jsonl.files='{how2qa_train.jsonl: train, how2qa_val.jsonl: val}' --set lfvila_jsonl.video_root=videos/

      lfvila prepare --source jsonl --set jsonl.path=my_corpus.jsonl

    """
    from .errors import ConfigError

    if task is not None and source not in (None, "lfvila-jsonl"):
        raise ConfigError(f"--task is for --source lfvila-jsonl (the authors' files), not --source {source}")
    overrides = ([f"source={source}"] if source else []) + (["strict=true"] if strict else [])
    overrides += [f"lfvila_jsonl.task={task}"] if task else []
    _run_single("prepare", opts, overrides, {})


@app.command(cls=_stage_help("cache"))
@command
@stage_command
def cache(
    corpus: str = typer.Option("latest", "--corpus", help="The prepare artifact to cache: ref name, key (prefix) or artifact directory."),
    max_failure_rate: Optional[float] = typer.Option(None, "--max-failure-rate", help="Fail when more than this fraction of segments cannot be decoded (default 0.05)."),
    store_url: Optional[str] = typer.Option(None, "--store-url", help="Write the Zarr store here (local path or fsspec URL) instead of inside the artifact."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Decode again the segments an earlier run recorded as failed: an unfinished run's (e.g. one stopped by --max-failure-rate), or, after videos were fixed or restored, a committed cache's (the new cache starts from its decoded rows)."),
    *,
    opts: StageOptions,
) -> None:
    """Decode K frames per segment, resize + centre-crop, and write them to a Zarr v3 store.

    Resumable: a killed run continues where it stopped. Under torchrun, the deepspeed
    launcher or srun each rank writes its own rows; as a Slurm job array each task writes its
    share without waiting for the others, and the last to finish commits.

    Examples:

      lfvila cache --set frames_per_segment=8 --set height=192 --set width=320

      torchrun --nproc_per_node 4 -m lfvila_cli.main cache --corpus latest

      srun --ntasks 8 lfvila cache

      sbatch --array=0-7 --wrap "lfvila cache"

    """
    overrides = []
    if max_failure_rate is not None:
        overrides.append(f"max_failure_rate={max_failure_rate}")
    if store_url is not None:
        overrides.append(f"store_url={store_url}")
    if retry_failed:
        overrides.append("retry_failed=true")
    _run_single("cache", opts, overrides, {"prepare": corpus})


def _given_args(ctx: typer.Context, leave_out: tuple[str, ...] = ()) -> list[str]:
    """The command line that reproduces this command's options as given (on the command line or
    through an environment variable), in canonical form; defaults are left to the defaults."""
    args = [ctx.info_name]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # an enum of Typer's own (vendored) click
        if param.name in leave_out or source is None or source.name == "DEFAULT":
            continue
        value, flag = ctx.params[param.name], param.opts[0]
        if getattr(param, "is_flag", False):
            args += [flag] if value else []
        elif param.multiple:
            for item in value or ():
                args += [flag, str(item)]
        elif value is not None:
            args += [flag, str(value)]
    return args


def _resume_force(resume: str, force: bool) -> bool:
    from .errors import ConfigError

    if resume not in ("auto", "never"):
        raise ConfigError(f"--resume must be auto or never, got {resume!r}")
    return force or resume == "never"


def _launched(ctx: typer.Context, num_gpus, hostfile, master_port, opts: StageOptions) -> bool:
    """With --num-gpus / --hostfile / --master-port outside a launched rank: run this same
    command through the DeepSpeed launcher (or, with --dry-run, print its command line) and
    return True; else False (run here)."""
    from .errors import ConfigError
    from .launch import check_launch_options, in_launched_rank, launch, launcher_command

    if (num_gpus is None and hostfile is None and master_port is None) or in_launched_rank():
        return False
    check_launch_options(num_gpus, hostfile, master_port)
    if opts.force:
        raise ConfigError("--force under a multi-rank launch would race; run it once in a single process")
    args = _given_args(ctx, leave_out=("num_gpus", "hostfile", "master_port"))
    if opts.dry_run:  # the key does not depend on the number of ranks: answer here
        typer.echo("would launch: " + shlex.join(launcher_command(args, num_gpus=num_gpus, hostfile=hostfile, master_port=master_port)))
        return True
    code = launch(args, num_gpus=num_gpus, hostfile=hostfile, master_port=master_port, echo=typer.echo)
    if code:
        raise typer.Exit(code)
    return True


NumGpusOpt = typer.Option(None, "--num-gpus", help="Run N ranks on this machine's GPUs (with --hostfile: at most N per machine) through the DeepSpeed launcher; without CUDA, N CPU ranks over gloo.")
HostfileOpt = typer.Option(None, "--hostfile", help="Run on the machines of this DeepSpeed hostfile ('<host> slots=<n>' lines; reached with ssh) through the DeepSpeed launcher.")
ResumeOpt = typer.Option("auto", "--resume", help="auto: continue from the newest complete checkpoint of an interrupted run of this config (the default); never: discard it and start afresh (as --force).")
MasterPortOpt = typer.Option(None, "--master-port", help="The rendezvous port of a --num-gpus / --hostfile launch (DeepSpeed's default: 29500).")


@app.command(cls=_stage_help("pretrain1"))
@command
@stage_command
def pretrain(
    ctx: typer.Context,
    stage: int = typer.Option(1, "--stage", help="1: VPC + 0.25·MTC, everything trainable; 2: MLM + 10·VTM on top of a frozen stage-1 model."),
    cache: str = typer.Option("latest", "--cache", help="The cache artifact to train on: ref name, key (prefix) or artifact directory."),
    init: str = typer.Option("latest", "--init", help="Stage 2: the stage-1 (pretrain1) artifact to start from."),
    features: str = typer.Option("latest", "--features", help="Stage 2 with --set features=true: the features artifact (the frozen video encoder's tokens) to read."),
    num_gpus: Optional[int] = NumGpusOpt,
    hostfile: Optional[Path] = HostfileOpt,
    resume: str = ResumeOpt,
    master_port: Optional[int] = MasterPortOpt,
    *,
    opts: StageOptions,
) -> None:
    """Pre-train LF-VILA on a frame store with DeepSpeed (stage 1 or 2).

    A killed run resumes from its newest complete checkpoint when the same command runs again
    (--resume auto, the default; --resume never or --force starts afresh). The finished model (config.json, model.safetensors, tokenizer/,
    metrics.jsonl, loss.png) is the artifact store/pretrain<STAGE>/<key>/.

    One process by default. --num-gpus N / --hostfile FILE run the same command on N GPUs / on
    every slot of the hostfile's machines through the DeepSpeed launcher (its command line is
    printed first); torchrun or the deepspeed command can launch it too. Inside a launched rank
    (RANK or LOCAL_RANK set) these options are ignored. Without CUDA, --num-gpus N starts N CPU
    ranks (gloo), as does torchrun.

    Examples:

      lfvila pretrain --stage 1 --set train.max_steps=200

      lfvila pretrain --stage 2 --set train.precision=bf16

      lfvila pretrain --stage 2 --set features=true --set loader.flip_prob=0   (from `lfvila features` tokens)

      lfvila pretrain --stage 1 --num-gpus 8

      lfvila pretrain --stage 1 --hostfile hosts.txt --master-port 29600

      torchrun --nproc_per_node 2 -m lfvila_cli.main pretrain --stage 1   (2 CPU ranks, no GPU)

    Of the keys below: video_init is a Swin-2D checkpoint for the stage-1 video encoder (e.g. Swin-B
    22k 384; "" = random); tokenizer "" trains one on the corpus.

    Progress: a bar on a terminal; off one (a Slurm or nohup log) rank 0 logs step/total, each loss
    term, lr, samples/s and the time left every 30 s (LFVILA_PROGRESS_S). train.tensorboard=true
    also writes TensorBoard event files into run/tensorboard/ (pip install 'lfvila[tensorboard]').
    """
    from .errors import ConfigError

    if stage not in (1, 2):
        raise ConfigError(f"--stage must be 1 or 2, got {stage}")
    opts.force = _resume_force(resume, opts.force)
    if _launched(ctx, num_gpus, hostfile, master_port, opts):
        return
    refs = {"cache": cache} if stage == 1 else {"cache": cache, "pretrain1": init, "features": features}
    _run_single(f"pretrain{stage}", opts, [], refs)


@app.command(cls=_stage_help("features"))
@command
@stage_command
def features(
    cache: str = typer.Option("latest", "--cache", help="The frame store stage 2 trains on: ref name, key (prefix) or artifact directory."),
    init: str = typer.Option("latest", "--init", help="The stage-1 (pretrain1) artifact whose frozen video encoder runs."),
    device: Optional[str] = typer.Option(None, "--device", help="The config key device: auto (the default: CUDA where it really runs, else the CPU), cpu, cuda or cuda:N."),
    *,
    opts: StageOptions,
) -> None:
    """Cache the frozen stage-1 video encoder's output tokens for stage 2 (bf16, Zarr).

    Stage 2 freezes the video encoder; with pretrain2's key features=true it reads these tokens
    instead of running the encoder every step. `views` augmented views per training sample
    are cached (view v is the window, crop and flip stage 2 draws in epoch v; epoch e reads
    view e mod views), one per validation sample. The loader keys that shape a view (window,
    crop, flip, normalisation, seed) must be those of the stage-2 run. Resumable; each rank of
    a torchrun or srun launch encodes its own rows. Then: lfvila pretrain --stage 2 --set
    features=true (with the same loader keys).

    Examples:

      lfvila features --set views=10 --set loader.flip_prob=0

      torchrun --nproc_per_node 4 -m lfvila_cli.main features --set views=4
    """
    _run_single("features", opts, [f"device={device}"] if device else [], {"cache": cache, "pretrain1": init})


@app.command(cls=_stage_help("finetune"))
@command
@stage_command
def finetune(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help="Your own corpus: retrieval | multiple-choice | classification. The paper's benchmarks: activitynet | didemo | queryd | cmd (retrieval), how2qa (multiple choice), violin | anet-qa (classification)."),
    cache: str = typer.Option("latest", "--cache", help="The task's cache artifact (segment_mode=chunks): ref name, key (prefix) or artifact directory."),
    init: str = typer.Option("latest", "--init", help="The pre-training artifact to start from (pretrain1 for retrieval, pretrain2 for QA): ref name, key or directory."),
    scratch: bool = typer.Option(False, "--scratch", help="Start from random weights (the 'without pre-training' baseline; as --set init=scratch)."),
    release_checkpoint: Optional[Path] = typer.Option(None, "--release-checkpoint", help="Start from the authors' released checkpoint file through the importer (as --set init=release --set release_checkpoint=PATH; name the tokenizer with --set tokenizer=...)."),
    num_gpus: Optional[int] = NumGpusOpt,
    hostfile: Optional[Path] = HostfileOpt,
    resume: str = ResumeOpt,
    master_port: Optional[int] = MasterPortOpt,
    *,
    opts: StageOptions,
) -> None:
    """Fine-tune a downstream task (docs/method.md §6) with the pre-training trainer (DeepSpeed,
    checkpoints, --resume, --num-gpus as for pretrain).

    Retrieval tasks train the dual encoder with VPC on frames spread over the whole video
    (cache with --set segment_mode=chunks); multiple choice (How2QA: 4 candidates) trains one
    logit per candidate plus the per-frame span loss; classification (VIOLIN, ActivityNet-QA) a
    classifier on the cross-modal encoder. The generic tasks take their candidates and classes
    from your corpus and report no paper figures (examples/custom_dataset walks through them).
    The model kept is the one with the best validation figure (text→video R@1 or accuracy),
    never chosen on test; selection.json says which step. The artifact is
    store/finetune/<key>/ (config.json, model.safetensors, tokenizer/, metrics.jsonl, loss.png).

    Examples:

      lfvila finetune --task retrieval --set train.epochs=20

      lfvila finetune --task activitynet --set train.epochs=20

      lfvila finetune --task how2qa --init my-stage2

      lfvila finetune --task didemo --scratch

      lfvila finetune --task how2qa --release-checkpoint how2qa_release.pt --set model=lfvila-base --set tokenizer=bert-base-uncased

    Of the keys below: max_subtitles -1 = the task's (How2QA 6, VIOLIN 4, the generic tasks 0);
    loader.clips_per_sample = the sentence slots a paragraph is merged to.
    """
    from .errors import ConfigError

    opts.force = _resume_force(resume, opts.force)
    if scratch and release_checkpoint is not None:
        raise ConfigError("--scratch and --release-checkpoint are two different starts: give one")
    if _launched(ctx, num_gpus, hostfile, master_port, opts):
        return
    overrides = [f"task={task}"]
    if scratch:
        overrides.append("init=scratch")
    if release_checkpoint is not None:
        overrides += ["init=release", f"release_checkpoint={release_checkpoint.resolve()}"]
    refs = {"cache": cache, "pretrain1": init, "pretrain2": init}  # the config's task picks the one used
    _run_single("finetune", opts, overrides, refs)


@app.command(cls=_stage_help("evaluate"))
@command
@stage_command
def evaluate(
    model: str = typer.Option("latest", "--model", help="The fine-tuned model (finetune artifact) to score: ref name, key (prefix) or directory."),
    zero_shot: Optional[str] = typer.Option(None, "--zero-shot", help="Score this pre-trained stage-1 artifact (ref, key or directory) on retrieval without fine-tuning, instead of --model."),
    cache: Optional[str] = typer.Option(None, "--cache", help="The task's cache artifact (segment_mode=chunks); default: the one the fine-tuned model was trained on, or the latest (zero-shot)."),
    split: Optional[str] = typer.Option(None, "--split", help="train | val | test (default test, or the config file's)."),
    task: Optional[str] = typer.Option(None, "--task", help="Zero-shot: a retrieval task, retrieval (your corpus: no paper figures) or a benchmark whose paper figures the report shows (default activitynet); fine-tuned: checked against the model's."),
    dual_softmax: Optional[float] = typer.Option(None, "--dual-softmax", help="Also report retrieval re-scored by dual softmax at this temperature (e.g. 0.01), labelled apart from the plain figures."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP),
    *,
    opts: StageOptions,
) -> None:
    """Score a model on one split of a task: metrics.json, report.md (a table beside the paper's
    figures and chance), predictions.jsonl and PNG figures (paragraph × video similarity;
    sentence × clip similarity for a model with local projections).

    Examples:

      lfvila evaluate                                  (the latest fine-tuned model, test split)

      lfvila evaluate --split val --dual-softmax 0.01

      lfvila evaluate --zero-shot latest --task activitynet

      lfvila evaluate --precision fp32                 (the fp32 reference instead of bf16)

    Of the keys below: task "" = the fine-tuned model's; dual_softmax 0 = off.
    """
    overrides = [f"split={split}"] if split else []
    if cache is None and zero_shot is None:
        from .pipeline.artifacts import Workdir
        from .stages.evaluate import default_cache

        cache = default_cache(Workdir(opts.workdir), model)
    if zero_shot is not None:
        overrides.append("model=pretrain1")
    if task:
        overrides.append(f"task={task}")
    if dual_softmax is not None:
        overrides.append(f"dual_softmax={dual_softmax}")
    if precision is not None:
        overrides.append(f"precision={precision}")
    refs = {"cache": cache or "latest", "finetune": model, "pretrain1": zero_shot or "latest"}
    _run_single("evaluate", opts, overrides, refs)
    if not opts.dry_run:
        from .pipeline.artifacts import Workdir

        _echo_report(Workdir(opts.workdir).resolve("evaluate", opts.name or "latest").path)


def _echo_report(artifact_dir: Path) -> None:
    """Print an evaluate artifact's report table (and where the whole report is)."""
    from .report import report_text_table

    typer.echo(report_text_table(artifact_dir))


@app.command(cls=_stage_help("export"))
@command
@stage_command
def export(
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Export to ONNX (the only format so far)."),
    model: str = typer.Option("latest", "--model", help="The model artifact to export: ref name, key (prefix) or directory."),
    stage: str = typer.Option("pretrain1", "--from", help="Which stage made it: pretrain1 | pretrain2 | finetune (retrieval or QA)."),
    fp16: bool = typer.Option(False, "--fp16", help="fp16 weights and compute for GPU serving (the same as --set precision=fp16)."),
    int8: bool = typer.Option(False, "--int8", help="The encoders with int8 weights for CPU serving, ONNX Runtime dynamic quantization, judged against the fp32 graphs by ranking (the same as --set precision=int8)."),
    *,
    opts: StageOptions,
) -> None:
    """Export a model to ONNX, each graph checked against PyTorch in ONNX Runtime on another
    batch size (max |difference| <= tolerance, and the same retrieval ranking or the same
    predicted answers, else a non-zero exit and nothing written).

    A contrastive model (pretrain1, pretrain2, a retrieval fine-tune) gives video_encoder.onnx
    (frames -> video and clip embeddings) and text_encoder.onnx (token ids and masks ->
    paragraph and sentence embeddings); a QA fine-tune (how2qa, violin, anet-qa) gives
    qa_model.onnx (frames and text -> answer logits, for how2qa also per-frame span logits) and,
    for anet-qa (or a classification task of answers given as text), answers.json. Batch, sentence and candidate axes are dynamic; the frame count
    and size are fixed (by default those the model was trained on) and recorded. The artifact store/export/<key>/ also holds the tokenizer
    and export.json (preprocessing, versions, parity figures); the preprocessing and versions
    are in each file's metadata too (lfvila.* keys).

    Examples:

      lfvila export --onnx

      lfvila export --onnx --from finetune

      lfvila export --onnx --set height=128 --set width=224   (another frame size than trained)

      lfvila export --onnx --fp16 --from pretrain1 --model latest

      lfvila export --onnx --int8           (the encoders for CPU serving; index and search read them as they are)

    --int8 exports the fp32 graphs, checks them against PyTorch, quantizes them (int8 MatMul
    weights per channel, activations quantized at run time) and checks the int8 graphs against
    the fp32 ones on 16 videos and paragraphs: every embedding within tolerance in 1 - cos, and at
    least 75% of the paragraphs with the same top-1 video.

    Of the keys below: frames, height, width 0 = as the model was trained; tolerance null = 1e-4
    (fp32) or 1e-2 (fp16) in max |onnx - torch|, 1e-2 (int8) in 1 - cos against the fp32 graphs.
    """
    from .errors import ConfigError

    if not onnx:
        raise ConfigError("--no-onnx: ONNX is the only export format so far")
    if fp16 and int8:
        raise ConfigError("--fp16 and --int8: one precision per export")
    overrides = [f"model={stage}"] + (["precision=fp16"] if fp16 else []) + (["precision=int8"] if int8 else [])
    _run_single("export", opts, overrides, {stage: model})


@app.command(cls=_stage_help("index"))
@command
@stage_command
def index(
    cache: str = typer.Option("latest", "--cache", help="The frame store to index (segment_mode=chunks): ref name, key (prefix) or directory."),
    model: str = typer.Option("latest", "--model", help="The encoders: the export artifact (engine onnx) or the pretrain1 artifact (engine torch): ref name, key (prefix) or directory."),
    device: Optional[str] = typer.Option(None, "--device", help="The config key device: auto (the default: CUDA where it really runs, else the CPU), cpu, cuda or cuda:N (CUDA required)."),
    precision: Optional[str] = typer.Option(None, "--precision", help=PRECISION_HELP + " Engine torch only: an ONNX export runs at its exported precision."),
    old_from: Optional[str] = typer.Option(None, "--from", hidden=True, help="Deprecated spelling of --model."),
    *,
    opts: StageOptions,
) -> None:
    """Embed every video of a frame store for `lfvila search`: video and per-clip embeddings with
    their time spans, in a Zarr feature store (features.zarr). Resumable: a killed run goes on
    where it stopped. The export must hold the encoders (a stage-1, stage-2 or retrieval model; a
    retrieval fine-tune has no clip embeddings, so its search gives no per-sentence clips).

    Examples:

      lfvila index                          (the latest cache, through the latest ONNX export)

      lfvila index --cache my-frames --model my-export   (a given frame store and export: ref names, keys or directories)

      lfvila index --set engine=torch       (through the PyTorch stage-1 model)

      lfvila index --device cuda            (on the GPU, or an error saying why not)

      lfvila index --set engine=torch --precision fp32   (the PyTorch model without bf16)
    """
    if old_from is not None:
        model = _renamed("index", "--from", "--model", old_from)
    refs = {"cache": cache, "export": model, "pretrain1": model}
    overrides = [f"device={device}"] if device else []
    if precision is not None:
        overrides.append(f"precision={precision}")
    _run_single("index", opts, overrides, refs)


@app.command()
@command
def search(
    sentences: List[str] = typer.Argument(..., help="The paragraph, one argument per sentence, in order."),
    index_ref: str = typer.Option("latest", "--index", help="The index artifact: ref name, key (prefix) or directory."),
    top_k: int = typer.Option(5, "--top-k", help="How many videos to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    device: str = typer.Option("auto", "--device", help="Where the paragraph is encoded: auto (CUDA where it really runs, else the CPU), cpu, cuda or cuda:N (CUDA required: an error where it cannot run)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="How a PyTorch index encodes the paragraph: auto, bf16 or fp32 (default: the precision the index was built at; an ONNX index runs at its exported precision)."),
    workdir: Path = WorkdirOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Find the videos of an index that best match a paragraph, and for each sentence the
    best-matching clip of each video with its time span (what MTC aligns).

    Example:

      lfvila search "the red circle grows." "the red circle moves to the left." --top-k 3
    """
    import json

    from .pipeline.artifacts import Workdir
    from .search import result_lines
    from .stages.index import query_index

    _setup_logging(verbose)
    results = query_index(Workdir(workdir), index_ref, list(sentences), top_k, device, precision)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for line in result_lines(results):
        typer.echo(line)


@app.command()
@command
def run(
    pipeline: Path = typer.Argument(..., help="A pipeline file, e.g. stages/quickstart.yaml."),
    workdir: Path = WorkdirOpt,
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Override a stage's key: STAGE.key=value, e.g. --set prepare.example.train_videos=8."),
    force: bool = ForceOpt,
    dry_run: bool = DryRunOpt,
    verbose: bool = VerboseOpt,
    show_config: bool = typer.Option(False, "--show-config", help="Print every stage's resolved config as YAML and exit; nothing runs."),
) -> None:
    """Run a chain of stages from a pipeline file; stages already done are skipped. The
    report table of every evaluate stage is printed at the end. Every stage's config and its
    inputs are checked before the first stage runs (a typo in the last stage fails at once);
    --dry-run reports the same problems.

    Examples:

      lfvila run stages/quickstart.yaml

      lfvila run stages/quickstart.yaml --dry-run

      lfvila run stages/quickstart.yaml --set pretrain1.train.epochs=5 --show-config
    """
    from .pipeline.artifacts import Workdir
    from .pipeline.ranks import current_launch
    from .stages import run_pipeline

    _setup_logging(verbose)
    if show_config:
        from .pipeline.chain import resolve_entries
        from .stages import load_pipeline

        entries = load_pipeline(pipeline)
        for i, (entry, cfg) in enumerate(zip(entries, resolve_entries(pipeline, entries, list(set_ or [])))):
            _echo_config(cfg, f"stages[{i}] ({entry.stage.name})")
        return
    results = run_pipeline(Workdir(workdir), pipeline, overrides=list(set_ or []), force=force, dry_run=dry_run, progress=_progress(), echo=typer.echo)

    launch = current_launch()
    for result in results:  # rank 0 prints the reports; a job array's task builds evaluate alone
        if result.stage == "evaluate" and result.artifact is not None and (launch.rank == 0 or not launch.together):
            typer.echo("")
            _echo_report(result.artifact.path)


@app.command()
@command
def status(workdir: Path = WorkdirOpt) -> None:
    """List the artifacts in the work directory and whether each is current or stale."""
    from .pipeline.artifacts import Workdir
    from .pipeline.status import partial_state
    from .stages import status_rows

    wd = Workdir(workdir)
    rows = status_rows(wd)
    if not rows:
        typer.echo(f"no artifacts in {workdir}")
    for row in rows:
        refs = f" [{', '.join(row['refs'])}]" if row["refs"] else ""
        typer.echo(f"{row['stage']:<8} {row['key']}{refs}  {row['created']}  {row['state']}  — {row['summary']}")
    for partial in wd.partials():
        typer.echo(f"{partial.parent.name:<8} {partial.name}  {partial_state(wd, partial)}")


@app.command()
@command
def env(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text.")) -> None:
    """What this machine can do for lfvila: versions (torch and its CUDA/cuDNN build,
    transformers, DeepSpeed, ONNX Runtime, the decoders), CUDA devices with their capability and
    memory, whether bf16 is supported and which train.precision that calls for, whether ONNX
    Runtime's CUDA provider really runs a graph, DeepSpeed's ops, decord/PyAV and the frame
    codecs (each checked by a round trip), and thread counts. A check that fails says so in its
    line; the others still run.

    Examples:

      lfvila env

      lfvila env --json > env.json      (attach it to a bug report)
    """
    import json

    from .environment import environment_report, report_lines

    report = environment_report()
    typer.echo(json.dumps(report, indent=2) if as_json else "\n".join(report_lines(report)))


def _strip_launcher_args() -> None:
    """The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment says the same."""
    args, skip = [], False
    for arg in sys.argv:
        if skip:
            skip = False
        elif arg in ("--local_rank", "--local-rank"):
            skip = True
        elif not arg.startswith(("--local_rank=", "--local-rank=")):
            args.append(arg)
    sys.argv = args


def main() -> None:
    _strip_launcher_args()
    app()


if __name__ == "__main__":
    main()
