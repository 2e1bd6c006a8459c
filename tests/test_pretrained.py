"""Model directories the ecosystem's way: ``save_pretrained`` / ``from_pretrained`` on every model
class, config.json's lfvila keys, old directories, hub ids from the local cache (no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lfvila_cli.errors import ArtifactError, ConfigError, LfvilaError
from lfvila_cli.model.lfvila import (
    LfvilaForClassification,
    LfvilaForMultipleChoice,
    LfvilaForPretrainingStage1,
    LfvilaForPretrainingStage2,
    LfvilaForRetrieval,
    LfvilaModel,
    build_model,
)
from lfvila_cli.model.presets import get_preset
from lfvila_cli.model.pretrained import MODEL_KEYS, load_pretrained, read_config, read_model_info, save_weights

OLD_DIR = Path(__file__).parent / "fixtures" / "model-dir-0.1.0"  # config.json + tokenizer/ as lfvila 0.1.0 (ebc2182) wrote them
KINDS = {
    "stage1": LfvilaForPretrainingStage1,
    "stage2": LfvilaForPretrainingStage2,
    "retrieval": LfvilaForRetrieval,
    "qa-multichoice": LfvilaForMultipleChoice,
    "qa-classification": LfvilaForClassification,
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from lfvila_cli.data.tokenizer import train_wordpiece_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_wordpiece_tokenizer(["the red circle grows", "the blue square moves to the left", "what does it do"], 60, path)
    return path


def tiny_model(variant: str, seed: int = 0, vocab: int = 100):
    config = get_preset("lfvila-tiny", variant, num_labels=3 if variant == "qa-classification" else None)
    config.text.bert_config = {**config.text.bert_config, "vocab_size": vocab}
    torch.manual_seed(seed)
    return build_model(config).eval()


def inputs(model, seed: int = 0):
    """frames (1, 16, 3, 64, 96) and text (1, [K,] 3, 32) for the model's forward."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(1, 16, 3, 64, 96, generator=gen)
    if isinstance(model, LfvilaForMultipleChoice):
        shape = (1, 4, 3)  # 4 candidates of 3 slots
    else:
        shape = (1, 2) if isinstance(model, LfvilaForPretrainingStage1) else (1, 3)  # stage 1: a sentence per clip
    ids = torch.randint(5, model.text_encoder.word_embeddings.num_embeddings, (*shape, 32), generator=gen)
    mask = torch.zeros_like(ids)
    mask[..., :7] = 1
    return frames, ids * mask, mask


def outputs(model, args) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(*args)
    tensors = []
    for value in vars(out).values():  # the output's tensors, and those of its nested outputs
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif hasattr(value, "__dict__"):
            tensors += [v for v in vars(value).values() if isinstance(v, torch.Tensor)]
    return tensors


@pytest.mark.parametrize("variant", list(KINDS))
def test_from_pretrained_round_trips_every_model_kind(variant, tokenizer_dir, tmp_path):
    model = tiny_model(variant)
    cls = KINDS[variant]
    assert type(model) is cls
    model.save_pretrained(tmp_path / "m", tokenizer=tokenizer_dir)
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    assert data["model_type"] == "lfvila" and data["architectures"] == [cls.__name__]
    assert data["lfvila_version"] == "0.1.0" and data["torch_dtype"] == "float32"
    assert (tmp_path / "m" / "tokenizer" / "vocab.txt").read_bytes() == (tokenizer_dir / "vocab.txt").read_bytes()

    loaded = cls.from_pretrained(tmp_path / "m")
    assert type(loaded) is cls and not loaded.training and loaded.pretrained_dir == tmp_path / "m"
    assert type(LfvilaModel.from_pretrained(str(tmp_path / "m"))) is cls  # the generic loader picks the class
    args = inputs(model)
    before, after = outputs(model, args), outputs(loaded, args)
    assert len(before) >= 2 and all(torch.equal(a, b) for a, b in zip(before, after))

    loaded.save_pretrained(tmp_path / "again")  # the tokenizer and the keys come along
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == data
    assert (tmp_path / "again" / "tokenizer" / "tokenizer.json").is_file()
    assert all(torch.equal(a, b) for a, b in zip(before, outputs(cls.from_pretrained(tmp_path / "again"), args)))


def test_task_labels_and_preprocessing_are_kept(tmp_path):
    from lfvila_cli.model.pretrained import save_pretrained

    model = tiny_model("qa-classification")
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "max_tokens": 24, "frames": 16, "height": 64, "width": 96}
    save_pretrained(model, model.config, tmp_path, task="anet-qa", labels=["yes", "no", "red"], preprocessing=pre)
    info = read_model_info(tmp_path)
    assert info["task"] == "anet-qa" and info["id2label"] == {"0": "yes", "1": "no", "2": "red"} and info["preprocessing"] == pre
    loaded = LfvilaForClassification.from_pretrained(tmp_path)
    loaded.save_pretrained(tmp_path / "copy")
    assert read_model_info(tmp_path / "copy") == info


def test_from_pretrained_refuses_another_kind_in_one_line(tokenizer_dir, tmp_path):
    tiny_model("retrieval").save_pretrained(tmp_path, tokenizer=tokenizer_dir)
    with pytest.raises(ArtifactError) as err:
        LfvilaForMultipleChoice.from_pretrained(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: holds a LfvilaForRetrieval, not a LfvilaForMultipleChoice; "
        "load it with LfvilaForRetrieval.from_pretrained or lfvila_cli.load_model"
    )


def test_an_old_model_directory_still_loads(tmp_path):
    """config.json as lfvila wrote it before the lfvila keys (the fixture: its real file)."""
    old = json.loads((OLD_DIR / "config.json").read_text())
    assert not set(MODEL_KEYS) & set(old)
    shutil.copytree(OLD_DIR, tmp_path / "old")
    torch.manual_seed(0)
    reference = build_model(read_config(tmp_path / "old")).eval()
    save_weights(reference.state_dict(), tmp_path / "old" / "model.safetensors")
    loaded = LfvilaModel.from_pretrained(tmp_path / "old")
    assert type(loaded) is LfvilaForPretrainingStage1
    assert loaded.pretrained_info == {"model_type": "lfvila", "architectures": ["LfvilaForPretrainingStage1"], "torch_dtype": "float32"}
    args = inputs(loaded)
    assert all(torch.equal(a, b) for a, b in zip(outputs(reference, args), outputs(loaded, args)))
    loaded.save_pretrained(tmp_path / "new")  # saved again: now with the keys
    assert json.loads((tmp_path / "new" / "config.json").read_text())["architectures"] == ["LfvilaForPretrainingStage1"]


def test_config_keys_stay_strict(tmp_path):
    model = tiny_model("retrieval")
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())

    def load_with(**changes):
        path.write_text(json.dumps({**data, **changes}))
        return LfvilaModel.from_pretrained(tmp_path)

    with pytest.raises(ConfigError, match="unknown config key 'colour'"):
        load_with(colour="red")
    with pytest.raises(ArtifactError, match=r"config.json: model_type 'bert' is not an lfvila model"):
        load_with(model_type="bert")
    with pytest.raises(ArtifactError, match=r"architectures says \['LfvilaForMultipleChoice'\] but .* make a LfvilaForRetrieval"):
        load_with(architectures=["LfvilaForMultipleChoice"])
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"config.json: invalid JSON"):
        LfvilaModel.from_pretrained(tmp_path)


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path):
    model = tiny_model("stage1")
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="unreadable weights file, truncated or corrupt") as err:
        LfvilaForPretrainingStage1.from_pretrained(tmp_path / "m")
    assert "\n" not in str(err.value)
    weights.unlink()
    with pytest.raises(ArtifactError, match="no such weights file"):
        LfvilaForPretrainingStage1.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ArtifactError, match="cannot read config.json"):
        load_pretrained(tmp_path / "m")
    with pytest.raises(ArtifactError, match="a file, not a model directory"):
        LfvilaModel.from_pretrained(Path(__file__))
    other = tiny_model("stage1", vocab=120)  # same layout, other shapes
    other.save_pretrained(tmp_path / "n")
    shutil.copy(tmp_path / "n" / "model.safetensors", tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "config.json").write_text(json.dumps(json.loads((OLD_DIR / "config.json").read_text())))
    with pytest.raises(ArtifactError, match="the weights do not fit the model config.json describes"):
        LfvilaModel.from_pretrained(tmp_path / "m")


def test_devices(tmp_path):
    from lfvila_cli.model.pretrained import resolve_device

    tiny_model("retrieval").save_pretrained(tmp_path)
    assert next(LfvilaModel.from_pretrained(tmp_path, device="cpu").parameters()).device.type == "cpu"
    assert resolve_device(None).type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device 'tpu': expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LfvilaError, match=r"^device 'cuda': CUDA is not available here") as err:
            LfvilaModel.from_pretrained(tmp_path, device="cuda")
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Hub ids, from a local cache laid out as huggingface_hub lays it out
# ---------------------------------------------------------------------------------------------

REVISION = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo: str, model_dir: Path) -> Path:
    """``models--org--name/snapshots/<revision>/`` holding the model directory, ``refs/main`` naming it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(model_dir, root / "snapshots" / REVISION)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REVISION)
    return root / "snapshots" / REVISION


def test_hub_ids_resolve_from_the_local_cache_offline(tmp_path, monkeypatch, tokenizer_dir):
    import huggingface_hub.constants

    model = tiny_model("retrieval")
    model.save_pretrained(tmp_path / "m", tokenizer=tokenizer_dir)
    snapshot = fake_hub_cache(tmp_path / "cache", "lfvila-test/tiny-retrieval", tmp_path / "m")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    loaded = LfvilaForRetrieval.from_pretrained("lfvila-test/tiny-retrieval")
    assert loaded.pretrained_dir == snapshot
    assert LfvilaModel.from_pretrained("lfvila-test/tiny-retrieval", revision=REVISION).pretrained_dir == snapshot
    args = inputs(model)
    assert all(torch.equal(a, b) for a, b in zip(outputs(model, args), outputs(loaded, args)))

    with pytest.raises(ArtifactError) as err:
        LfvilaModel.from_pretrained("lfvila-test/absent")
    assert str(err.value) == (
        "'lfvila-test/absent': no such directory, and hub id lfvila-test/absent is not in the local cache "
        "(set HF_HUB_OFFLINE=0 to download it)"
    )
    with pytest.raises(ArtifactError, match="at revision 'v2' is not in the local cache"):
        LfvilaModel.from_pretrained("lfvila-test/tiny-retrieval", revision="v2")
    with pytest.raises(ArtifactError, match="not a hub id"):
        LfvilaModel.from_pretrained("no/such/dir")

    # a local directory of the same name wins over the hub id
    tiny_model("stage1").save_pretrained(tmp_path / "lfvila-test" / "tiny-retrieval")
    assert type(LfvilaModel.from_pretrained("lfvila-test/tiny-retrieval")) is LfvilaForPretrainingStage1


def test_the_choice_head_can_start_as_the_vtm_head(tokenizer_dir, tmp_path):
    """finetune choice_head_init=vtm: each candidate's first choice logit is stage 2's VTM
    match-minus-mismatch logit on the same fused state; fresh (the default) leaves the head as
    built, and a start without a VTM head (a retrieval model) keeps it fresh."""
    from lfvila_cli.config import resolve
    from lfvila_cli.data.tokenizer import load_tokenizer
    from lfvila_cli.model.pretrained import WEIGHTS_FILE, choice_head_from_vtm, load_weights
    from lfvila_cli.train.config import FinetuneConfig
    from lfvila_cli.train.finetune import build_task_model

    stage2 = tiny_model("stage2", seed=1, vocab=len(load_tokenizer(str(tokenizer_dir))))
    with torch.no_grad():
        stage2.vtm_head.classifier.weight.normal_(0, 1)  # far from any fresh head
        stage2.vtm_head.classifier.bias.normal_(0, 1)
    stage2.save_pretrained(tmp_path / "s2", tokenizer=tokenizer_dir)
    tokenizer = load_tokenizer(str(tmp_path / "s2" / "tokenizer"))
    pooled = torch.randn(6, stage2.vtm_head.classifier.in_features)
    match = stage2.vtm_head(pooled)
    match = match[:, 1] - match[:, 0]
    heads = {}
    for init in ("vtm", "fresh"):
        cfg = resolve(FinetuneConfig, overrides=["task=how2qa", f"choice_head_init={init}"])
        model, _, report = build_task_model(cfg, tmp_path / "s2", tokenizer, None)
        heads[init] = model.multiple_choice_head.classifier
        assert report.get("choice_head") == ("vtm" if init == "vtm" else None)
    with torch.no_grad():
        assert torch.allclose(heads["vtm"](pooled)[:, 0], match, atol=1e-5)
        assert not torch.allclose(heads["fresh"](pooled)[:, 0], match, atol=1e-2)
        assert heads["fresh"].weight.std() < 0.05  # N(0, 0.02)

    tiny_model("retrieval").save_pretrained(tmp_path / "r")
    head = tiny_model("qa-multichoice", seed=2).multiple_choice_head
    before = head.classifier.weight.clone()
    assert not choice_head_from_vtm(head, load_weights(tmp_path / "r" / WEIGHTS_FILE))
    assert torch.equal(head.classifier.weight, before)


@pytest.mark.parametrize("overrides, message", [
    (["task=activitynet", "choice_head_init=vtm"], "task activitynet is retrieval"),
    (["task=how2qa", "choice_head_init=stage2"], "expected fresh or vtm"),
])
def test_choice_head_init_is_checked(overrides, message):
    from lfvila_cli.config import resolve
    from lfvila_cli.train.config import FinetuneConfig

    with pytest.raises(ConfigError, match="choice_head_init") as caught:
        resolve(FinetuneConfig, overrides=overrides)
    assert message in str(caught.value)
