from dataclasses import dataclass, field
from typing import Literal

import pytest

from lfvila_cli.config import check, resolve, to_dict
from lfvila_cli.errors import ConfigError


@dataclass
class Inner:
    size: int = 4
    rate: float = 0.5
    name: str = "x"

    def __post_init__(self):
        check(self.size > 0, "inner.size", "must be positive")


@dataclass
class Outer:
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    items: list[int] = field(default_factory=list)
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_layers_apply_in_order(tmp_path):
    f1 = tmp_path / "one.yaml"
    f1.write_text("inner:\n  size: 8\n  rate: 1\nmode: b\n")
    f2 = tmp_path / "two.yaml"
    f2.write_text("inner:\n  size: 16\n")
    cfg = resolve(Outer, files=[f1, f2], overrides=["inner.name=y", "items=[1, 2]"], layers=[{"flag": True}])
    assert cfg.mode == "b" and cfg.flag is True
    assert cfg.inner.size == 16 and cfg.inner.rate == 1.0 and isinstance(cfg.inner.rate, float)
    assert cfg.inner.name == "y" and cfg.items == [1, 2]
    assert to_dict(cfg)["inner"] == {"size": 16, "rate": 1.0, "name": "y"}
    # an override beats the file
    assert resolve(Outer, files=[f1], overrides=["inner.size=3"]).inner.size == 3


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("inner.sise=3", "unknown config key 'inner.sise'"),
        ("colour=red", "unknown config key 'colour'"),
        ("inner.size=ten", "'inner.size': expected int"),
        ("inner.size=0", "'inner.size': must be positive"),
        ("mode=c", "'mode': expected one of ['a', 'b']"),
        ("flag=maybe", "'flag': expected true/false"),
        ("items=[1, x]", "'items[1]': expected int"),
        ("inner=3", "inner: expected a mapping"),
        ("novalue", "expected KEY=VALUE"),
    ],
)
def test_errors_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        resolve(Outer, overrides=[override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  size: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        resolve(Outer, files=[bad])
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve(Outer, files=[tmp_path / "missing.yaml"])
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve(Outer, files=[listy])


def test_optional_and_null():
    assert resolve(Outer, overrides=["path=null"]).path is None
    assert resolve(Outer, overrides=["path=/data"]).path == "/data"


@dataclass
class WithMapping:
    splits: dict = field(default_factory=lambda: {"train": "train", "val_1": "val"})


def test_mapping_fields_merge_one_entry_at_a_time():
    cfg = resolve(WithMapping, overrides=["splits.val_1=test"])
    assert cfg.splits == {"train": "train", "val_1": "test"}


@dataclass
class Texts:
    path: str = ""
    maybe: str | None = "x"
    count: int = 1


def test_set_gives_string_fields_the_text_as_typed():
    cfg = resolve(Texts, overrides=["path=2024-01-01.jsonl", "maybe=on", "count=3"])
    assert cfg.path == "2024-01-01.jsonl" and cfg.maybe == "on" and cfg.count == 3
    assert resolve(Texts, overrides=["path=#1.jsonl"]).path == "#1.jsonl"
    assert resolve(Texts, overrides=["path=a: b"]).path == "a: b"
    assert resolve(Texts, overrides=["maybe=null"]).maybe is None


def test_non_utf8_config_file_is_one_line(tmp_path):
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="bin.yaml: not a UTF-8 text file"):
        resolve(Outer, files=[bad])


@pytest.mark.parametrize("text, value", [("2e-3", 2e-3), ("1E5", 1e5), ("-.5e-1", -0.05), ("3", 3.0)])
def test_float_keys_take_exponents_without_a_dot(text, value):
    # YAML 1.1 reads '2e-3' as a string; a float key must still take it.
    assert resolve(Outer, overrides=[f"inner.rate={text}"]).inner.rate == pytest.approx(value)


def test_float_key_rejects_words():
    with pytest.raises(ConfigError, match="inner.rate"):
        resolve(Outer, overrides=["inner.rate=fast"])
