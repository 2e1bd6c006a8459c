"""The training configs and every default training setting, in one torch-free module.

``TrainConfig``: the optimisation recipe (its field defaults are the paper's optimiser,
docs/method.md §5). ``PretrainConfig`` and ``FinetuneConfig``: one pre-training stage and one
downstream fine-tune; their defaults are the commands' (the tiny model on the bundled example, on
a CPU), named once below. The paper's recipes are pipeline files (stages/paper/). Importing this
module imports no torch: the stage registry reads these classes on every command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..config import check
from ..data.loader_config import LoaderConfig
from ..model.precision import check_precision
from ..objectives.config import ObjectiveConfig
from ..tasks import TaskSpec, task_spec


@dataclass
class TrainConfig:
    """Optimisation recipe (docs/method.md §5). Steps are optimizer steps (``grad_accum`` micro-batches)."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.05
    # Warm-up: ``warmup_steps`` if set, else ``warmup_ratio`` of the total (1 of 10 epochs).
    warmup_steps: Optional[int] = None
    warmup_ratio: float = 0.1
    final_lr_ratio: float = 0.01
    micro_batch: int = 16
    grad_accum: int = 1
    # docs/method.md §5 names no clipping; 1.0 (global L2 norm) is the usual BERT/ViT pre-training choice.
    grad_clip: float = 1.0
    zero_stage: int = 2
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    epochs: int = 10
    max_steps: Optional[int] = None  # stop earlier than ``epochs`` (smoke runs, tests)
    log_every: int = 1
    checkpoint_every: int = 1000
    keep_last_k: int = 2
    max_bad_steps: int = 10  # NaN/Inf steps tolerated over the whole run
    seed: int = 0
    # TensorBoard event files in run/tensorboard/ (the logged steps and the validation figures);
    # needs the tensorboard package: pip install 'lfvila[tensorboard]'.
    tensorboard: bool = False

    def __post_init__(self) -> None:
        check(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas", f"expected two values in [0, 1), got {list(self.betas)}")
        check(self.eps > 0, "train.eps", f"must be > 0, got {self.eps}")
        check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.warmup_steps is None or self.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(0 <= self.final_lr_ratio <= 1, "train.final_lr_ratio", f"must be in [0, 1], got {self.final_lr_ratio}")
        check(self.micro_batch >= 1, "train.micro_batch", f"must be >= 1, got {self.micro_batch}")
        check(self.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip}")
        # ZeRO 1/2 only: the bad-step skip relies on their overflow check (stage 0 has none).
        check(self.zero_stage in (1, 2), "train.zero_stage", f"must be 1 or 2, got {self.zero_stage}")
        check(self.precision in ("fp32", "bf16", "fp16"), "train.precision", f"expected fp32, bf16 or fp16, got {self.precision!r}")
        check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        check(self.max_steps is None or self.max_steps >= 1, "train.max_steps", f"must be >= 1, got {self.max_steps}")
        check(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        check(self.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        check(self.keep_last_k >= 1, "train.keep_last_k", f"must be >= 1, got {self.keep_last_k}")
        check(self.max_bad_steps >= 0, "train.max_bad_steps", f"must be >= 0, got {self.max_bad_steps}")

    def total_steps(self, steps_per_epoch: int) -> int:
        planned = self.epochs * steps_per_epoch
        return min(planned, self.max_steps) if self.max_steps is not None else planned

    def resolved_warmup_steps(self, steps_per_epoch: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_ratio * self.epochs * steps_per_epoch))


# ------------------------------------------------------------------ every default training setting
# TrainConfig's field defaults above are the paper's optimiser (docs/method.md §5). What follows are
# the defaults of the commands (``lfvila pretrain``, ``lfvila finetune`` and the pipeline stages
# when nothing is set): the tiny model on the bundled example, on a CPU; the paper's recipes are
# pipeline files (stages/paper/). ``PretrainConfig`` and ``FinetuneConfig`` (below) take their
# training fields from here.

CPU_LR = 2e-4  # peak lr: at 5e-4 and above the tiny model's embeddings collapsed to one point in the first
#                few dozen steps (VPC stuck at 2·ln B) or learned far slower (README, "Learning check")
CPU_PRECISION = "fp32"
CPU_CHECKPOINT_EVERY = 200  # steps
PRETRAIN_WARMUP_STEPS = 20
FINETUNE_WARMUP_STEPS = 10
VAL_EVERY = 50  # steps between validations; 0 = only at the end
VAL_BATCH = 8
PRETRAIN_VAL_MAX_SAMPLES = 256  # the first samples of the val split; 0 = all of it
FINETUNE_VAL_MAX_SAMPLES = 0  # fine-tuning selects its model on the whole val split
WORKERS = 1  # DataLoader worker processes feeding training (0 = load in the training process)
MODEL = "lfvila-tiny"  # preset name
TEXT_MODEL = "random"  # the preset's BERT architecture with random weights; else a hub id / path
TOKENIZER_VOCAB_SIZE = 2000  # a WordPiece tokenizer trained on the train texts, when none is named
MAX_TOKENS = 32  # the loader's tokens per sentence


def cpu_train(warmup_steps: int) -> TrainConfig:
    """The commands' optimisation recipe (micro-batch 16, 10 epochs: TrainConfig's own)."""
    return TrainConfig(lr=CPU_LR, precision=CPU_PRECISION, checkpoint_every=CPU_CHECKPOINT_EVERY, warmup_steps=warmup_steps)


def pretrain_train() -> TrainConfig:
    """``PretrainConfig.train``'s default (stages/quickstart.yaml sets the epochs)."""
    return cpu_train(PRETRAIN_WARMUP_STEPS)


def finetune_train() -> TrainConfig:
    """``FinetuneConfig.train``'s default (docs/method.md §6's lr 5e-5 and 20/30/100 epochs: stages/paper/)."""
    return cpu_train(FINETUNE_WARMUP_STEPS)


_VIDEO_INIT_STAGE1_ONLY = "applies to stage 1 only (stage 2 starts from the stage-1 model, video encoder included)"


@dataclass
class PretrainConfig:
    """One pre-training stage; its defaults are named above (the CPU-sized recipe)."""

    stage: int = 1
    model: str = MODEL  # preset name
    text_model: str = TEXT_MODEL  # "random" = the preset's BERT architecture, random weights; else hub id / path
    tokenizer: str = ""  # "" = train a WordPiece tokenizer on the train sentences (stage 2: the stage-1 one)
    tokenizer_vocab_size: int = TOKENIZER_VOCAB_SIZE
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(max_tokens=MAX_TOKENS))
    # Loss weights, temperature, MTC sampling, MLM rate (docs/method.md §4); saved in the model's config.json.
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=pretrain_train)
    val_every: int = VAL_EVERY  # steps; 0 = only at the end
    val_max_samples: int = PRETRAIN_VAL_MAX_SAMPLES  # 0 = the whole val split
    val_batch: int = VAL_BATCH
    # validation in fp32 training: auto (bf16 where the hardware has it natively, else fp32) | bf16 |
    # fp32; bf16 or fp16 training validates at its own precision
    val_precision: str = "auto"
    workers: int = WORKERS  # DataLoader worker processes feeding training (0 = load in the training process)
    # Stage 1: "" = random video encoder; else a Swin-2D checkpoint (.pth / .bin / .safetensors, or a
    # directory holding model.safetensors / pytorch_model.bin) inflated into it (docs/method.md §2: Swin-B
    # ImageNet-22k 384 px, window 12, e.g. swin_base_patch4_window12_384_22k.pth, for lfvila-base).
    video_init: str = ""
    # Stage 2: read the frozen video encoder's output from a `features` artifact of the same frame store
    # and stage-1 model (docs/method.md §8) instead of running the encoder every step.
    features: bool = False

    def __post_init__(self) -> None:
        check(self.stage in (1, 2), "stage", f"must be 1 or 2, got {self.stage}")
        check(bool(self.model), "model", "needs a preset name (e.g. lfvila-tiny)")
        check(self.tokenizer_vocab_size > 5, "tokenizer_vocab_size", f"must be > 5, got {self.tokenizer_vocab_size}")
        check(self.val_every >= 0, "val_every", f"must be >= 0, got {self.val_every}")
        check(self.val_max_samples >= 0, "val_max_samples", f"must be >= 0, got {self.val_max_samples}")
        check(self.val_batch >= 1, "val_batch", f"must be >= 1, got {self.val_batch}")
        check_precision(self.val_precision, "val_precision")
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")
        check(self.stage == 1 or not self.video_init, "video_init", _VIDEO_INIT_STAGE1_ONLY)
        check(self.stage == 2 or not self.features, "features", "applies to stage 2 only (stage 1 trains the video encoder)")


@dataclass
class FeaturesConfig:
    """The ``features`` stage: the frozen stage-1 video encoder's output for stage 2, ``views``
    augmented views per training sample (docs/method.md §8)."""

    views: int = 1  # per training sample; stage 2's epoch e reads view e mod views (val: one, unaugmented)
    # The loader of the stage-2 run that reads the store: its view fields (loader_config.VIEW_FIELDS) must match.
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(max_tokens=MAX_TOKENS))
    batch: int = 8  # samples per encoder forward (not part of the key)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (not part of the key: the tokens are the model's)

    def __post_init__(self) -> None:
        check(self.views >= 1, "views", f"must be >= 1, got {self.views}")
        check(self.batch >= 1, "batch", f"must be >= 1, got {self.batch}")


@dataclass
class FinetuneConfig:
    """One downstream fine-tune; its defaults are named above (the CPU-sized recipe)."""

    task: str = "activitynet"  # retrieval | multiple-choice | classification (your corpus), or a benchmark: activitynet | didemo | queryd | cmd | how2qa | violin | anet-qa
    init: Literal["pretrained", "scratch", "release"] = "pretrained"
    release_checkpoint: str = ""  # init=release: the authors' checkpoint file (.pt / .bin / .safetensors)
    model: str = MODEL  # preset for init=scratch|release (init=pretrained: the artifact's architecture)
    text_model: str = TEXT_MODEL  # init=scratch|release: as in pretrain
    tokenizer: str = ""  # "" = the pre-trained model's (init=pretrained) or one trained on the train texts (scratch)
    tokenizer_vocab_size: int = TOKENIZER_VOCAB_SIZE
    loader: LoaderConfig = field(default_factory=lambda: LoaderConfig(max_tokens=MAX_TOKENS))
    max_subtitles: int = -1  # subtitle slots after the question / statement; -1 = the task's (How2QA 6, VIOLIN 4)
    span_weight: float = 1.0  # How2QA: weight of the per-frame span loss
    # multiple choice: how the candidate scorer starts. fresh = N(0, 0.02); vtm = the start's
    # video-text matching head (its match minus mismatch logit), where the pre-trained start has one
    # (stage 2's is trained), else fresh; docs/method.md §6
    choice_head_init: str = "fresh"
    train: TrainConfig = field(default_factory=finetune_train)
    val_every: int = VAL_EVERY  # steps; 0 = only at the end
    val_max_samples: int = FINETUNE_VAL_MAX_SAMPLES  # 0 = the whole val split
    val_batch: int = VAL_BATCH
    # validation in fp32 training: auto (bf16 where the hardware has it natively, else fp32) | bf16 |
    # fp32; bf16 or fp16 training validates at its own precision
    val_precision: str = "auto"
    workers: int = WORKERS

    def __post_init__(self) -> None:
        task_spec(self.task)
        check(self.init in ("pretrained", "scratch", "release"), "init", f"expected pretrained, scratch or release, got {self.init!r}")
        check(self.init != "release" or bool(self.release_checkpoint), "release_checkpoint", "init=release needs the checkpoint file")
        check(self.max_subtitles >= -1, "max_subtitles", f"must be >= -1 (-1 = the task's), got {self.max_subtitles}")
        check(self.span_weight >= 0, "span_weight", f"must be >= 0, got {self.span_weight}")
        check(self.choice_head_init in ("fresh", "vtm"), "choice_head_init", f"expected fresh or vtm, got {self.choice_head_init!r}")
        check(
            self.choice_head_init == "fresh" or self.spec.kind == "multiple_choice",
            "choice_head_init",
            f"vtm starts a multiple-choice head; task {self.task} is {self.spec.kind.replace('_', '-')}",
        )
        check(self.tokenizer_vocab_size > 5, "tokenizer_vocab_size", f"must be > 5, got {self.tokenizer_vocab_size}")
        check(self.val_every >= 0, "val_every", f"must be >= 0, got {self.val_every}")
        check(self.val_max_samples >= 0, "val_max_samples", f"must be >= 0, got {self.val_max_samples}")
        check(self.val_batch >= 1, "val_batch", f"must be >= 1, got {self.val_batch}")
        check_precision(self.val_precision, "val_precision")
        check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}")

    @property
    def spec(self) -> TaskSpec:
        return task_spec(self.task)

    @property
    def subtitles(self) -> int:
        return self.spec.max_subtitles if self.max_subtitles < 0 else self.max_subtitles
