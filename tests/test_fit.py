"""The recipes' resolved default configs (what every artifact key hashes) against a literal copy,
the defaults' one home (train/engine.py), and the recipe shape of pre-training and fine-tuning
(lfvila_cli.train.fit, lfvila_cli.train.recipe). Training itself: tests/test_pretrain.py and
tests/test_finetune.py."""

from __future__ import annotations

import pytest

from lfvila_cli.config import to_dict
from lfvila_cli.tasks import TASKS
from lfvila_cli.train import config as engine
from lfvila_cli.train.finetune import FinetuneConfig, FinetuneRecipe
from lfvila_cli.train.pretrain import PretrainConfig, PretrainRecipe
from lfvila_cli.train.recipe import Recipe

LOADER = {
    "clips_per_sample": 4, "frames_per_clip": 0, "max_tokens": 32, "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "crop_scale": [0.8, 1.0], "crop_ratio": [0.75, 1.3333333333333333],
    "flip_prob": 0.5, "seed": 0, "source": "store",
}


def _train(warmup_steps: int) -> dict:
    return {
        "lr": 0.0002, "betas": (0.9, 0.98), "eps": 1e-08, "weight_decay": 0.05, "warmup_steps": warmup_steps,
        "warmup_ratio": 0.1, "final_lr_ratio": 0.01, "micro_batch": 16, "grad_accum": 1, "grad_clip": 1.0,
        "zero_stage": 2, "precision": "fp32", "epochs": 10, "max_steps": None, "log_every": 1,
        "checkpoint_every": 200, "keep_last_k": 2, "max_bad_steps": 10, "seed": 0, "tensorboard": False,
    }


# Literal copies of the resolved defaults as they were before the fit loop (commit 4111efe).
PRETRAIN = {
    "stage": 1, "model": "lfvila-tiny", "text_model": "random", "tokenizer": "", "tokenizer_vocab_size": 2000,
    "loader": LOADER,
    "objectives": {
        "vpc_weight": 1.0, "mtc_weight": 0.25, "mlm_weight": 1.0, "vtm_weight": 10.0, "temperature": 0.05,
        "mtc_num_key": 2, "mtc_num_value": 2, "mtc_num_other_neg": 3, "mlm_probability": 0.15,
        "vtm_order_negatives": 0.0, "seed": 0,
    },
    "train": _train(20), "val_every": 50, "val_max_samples": 256, "val_batch": 8, "val_precision": "auto", "workers": 1, "video_init": "", "features": False,
}
FINETUNE = {
    "task": "activitynet", "init": "pretrained", "release_checkpoint": "", "model": "lfvila-tiny", "text_model": "random",
    "tokenizer": "", "tokenizer_vocab_size": 2000, "loader": LOADER, "max_subtitles": -1, "span_weight": 1.0, "choice_head_init": "fresh",
    "train": _train(10), "val_every": 50, "val_max_samples": 0, "val_batch": 8, "val_precision": "auto", "workers": 1,
}
TRAIN_CONFIG = {
    "lr": 5e-05, "betas": (0.9, 0.98), "eps": 1e-08, "weight_decay": 0.05, "warmup_steps": None, "warmup_ratio": 0.1,
    "final_lr_ratio": 0.01, "micro_batch": 16, "grad_accum": 1, "grad_clip": 1.0, "zero_stage": 2, "precision": "bf16",
    "epochs": 10, "max_steps": None, "log_every": 1, "checkpoint_every": 1000, "keep_last_k": 2, "max_bad_steps": 10, "seed": 0,
    "tensorboard": False,
}


def _same(got: dict, want: dict) -> None:
    """Equal values and the same key order, nested (the saved configs are written in this order)."""
    assert got == want
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, dict):
            _same(got[key], value)


def test_pretrain_defaults_resolve_as_before():
    _same(to_dict(PretrainConfig()), PRETRAIN)
    _same(to_dict(PretrainConfig(stage=2)), {**PRETRAIN, "stage": 2})


@pytest.mark.parametrize("task", list(TASKS))
def test_finetune_defaults_resolve_as_before(task):
    _same(to_dict(FinetuneConfig(task=task)), {**FINETUNE, "task": task})


def test_the_default_keys_hash_the_training_config_as_before_tensorboard():
    """``train.tensorboard`` (added later) enters an artifact key only when set."""
    from lfvila_cli.stages.finetune import key_config as finetune_key
    from lfvila_cli.stages.pretrain import key_config as pretrain_key

    for key, config, warmup in ((pretrain_key, PretrainConfig(), 20), (finetune_key, FinetuneConfig(), 10)):
        _same(key(config)["train"], {k: v for k, v in _train(warmup).items() if k != "tensorboard"})


def test_train_config_defaults_are_the_papers():
    _same(to_dict(engine.TrainConfig()), TRAIN_CONFIG)


def test_the_commands_defaults_have_one_home():
    pre, fine = PretrainConfig(), FinetuneConfig()
    assert pre.train.lr == fine.train.lr == engine.CPU_LR
    assert (pre.train.warmup_steps, fine.train.warmup_steps) == (engine.PRETRAIN_WARMUP_STEPS, engine.FINETUNE_WARMUP_STEPS)
    assert pre.val_every == fine.val_every == engine.VAL_EVERY and pre.val_batch == fine.val_batch == engine.VAL_BATCH
    assert (pre.val_max_samples, fine.val_max_samples) == (engine.PRETRAIN_VAL_MAX_SAMPLES, engine.FINETUNE_VAL_MAX_SAMPLES)
    assert pre.loader.max_tokens == fine.loader.max_tokens == engine.MAX_TOKENS
    # each call gives a fresh config: editing one run's never changes the next run's defaults
    pre.train.lr = 1.0
    assert PretrainConfig().train.lr == engine.CPU_LR


def test_pretraining_and_fine_tuning_are_recipes_of_one_kind(tmp_path):
    stage1 = PretrainRecipe(PretrainConfig(), tmp_path / "c.jsonl", "s", None)
    stage2 = PretrainRecipe(PretrainConfig(stage=2), tmp_path / "c.jsonl", "s", tmp_path)
    qa = FinetuneRecipe(FinetuneConfig(task="how2qa", init="scratch"), tmp_path / "c.jsonl", "s", None)
    retrieval = FinetuneRecipe(FinetuneConfig(task="didemo", init="scratch"), tmp_path / "c.jsonl", "s", None)
    assert all(isinstance(r, Recipe) for r in (stage1, stage2, qa, retrieval))
    # pre-training keeps its final weights; fine-tuning selects on a validation figure
    assert stage1.select_on is None and stage2.select_on is None
    assert (qa.select_on, retrieval.select_on) == ("accuracy", "text-to-video R@1")
    # stage 2 validates on rank 0 alone and needs the stage-1 tokenizer; the others validate on every rank
    assert stage2.validate_on_rank0_only and not stage1.validate_on_rank0_only and not qa.validate_on_rank0_only
    assert stage2.tokenizer_required and stage1.tokenizer_required is None and qa.tokenizer_required is None


def test_every_rank_looks_for_a_resumed_tokenizer_before_rank_0_writes_one(tmp_path, monkeypatch):
    """Under several ranks, a rank that reached the tokenizer late used to find the one rank 0 had
    just trained, take it for a resumed run's, and skip the barrier rank 0 waited at (a hang).
    Now rank 0 writes only after a barrier every rank passes after looking, and every rank
    passes the same barriers."""
    from lfvila_cli.train import fit

    events: list[str] = []
    out_tok = tmp_path / "tokenizer"

    def train(texts, vocab_size, directory):
        assert "barrier" in events, "rank 0 wrote its tokenizer before every rank had looked for a resumed one"
        events.append("write")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer_config.json").write_text("{}")
        return "trained"

    monkeypatch.setattr("lfvila_cli.data.tokenizer.train_wordpiece_tokenizer", train)
    monkeypatch.setattr("lfvila_cli.data.tokenizer.load_tokenizer", lambda path, **kw: "loaded")
    monkeypatch.setattr(fit, "barrier", lambda world_size: events.append("barrier"))
    texts = lambda: ["a b c"]  # noqa: E731
    assert fit.resolve_tokenizer("", 50, texts, None, out_tok, 0, 2, "auto") == "trained"
    rank0 = events.count("barrier")
    # rank 1 of the same run, on the same (now written) directory: it had looked before rank 0
    # wrote (the first barrier), so it loads what rank 0 wrote after the second, as rank 0 did
    events.clear()
    (out_tok / "tokenizer_config.json").unlink()

    def written_by_rank_0(world_size):
        events.append("barrier")
        if events.count("barrier") == 2:
            (out_tok / "tokenizer_config.json").write_text("{}")

    monkeypatch.setattr(fit, "barrier", written_by_rank_0)
    assert fit.resolve_tokenizer("", 50, texts, None, out_tok, 1, 2, "auto") == "loaded"
    assert events.count("barrier") == rank0 == 2
