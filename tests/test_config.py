"""config.py: one type-checked override path for Python, CLI and papermill."""

import argparse
from dataclasses import dataclass, field

import pytest

from cxr_utils.config import (add_arguments, apply_overrides, coerce, from_preset, load_json,
                              overrides_from_args, save_json)
from cxr_utils.errors import ConfigError


@dataclass
class Toy:
    name: str = "a"
    size: int = 64
    lr: float = 1e-3
    flag: bool = False
    classes: tuple[str, ...] | None = None
    loss: str = field(default="bce", metadata={"help": "loss"})
    ratio: float | None = None

    def validate(self) -> None:
        if self.size <= 0:
            raise ConfigError(f"size must be positive, got {self.size}")


PRESETS = {"big": {"size": 128, "lr": 2e-4}}


def test_python_override_types():
    cfg = apply_overrides(Toy(), size=32, lr=1, flag=True, classes=["x", "y"])
    assert (cfg.size, cfg.lr, cfg.flag, cfg.classes) == (32, 1.0, True, ("x", "y"))
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize("name,value", [("size", "abc"), ("size", 1.5), ("size", True), ("flag", "maybe"),
                                        ("lr", "fast"), ("name", 3), ("ratio", "x")])
def test_ill_typed_values_are_config_errors(name, value):
    with pytest.raises(ConfigError, match=name):
        apply_overrides(Toy(), {name: value})


def test_unknown_field_names_the_field():
    with pytest.raises(ConfigError, match="sise"):
        apply_overrides(Toy(), sise=3)


def test_validate_runs_after_override():
    with pytest.raises(ConfigError, match="positive"):
        apply_overrides(Toy(), size=0)


def test_cli_strings_and_python_values_give_the_same_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Toy)
    args = parser.parse_args(["--size", "32", "--lr", "0.5", "--flag", "yes", "--classes", "a,b",
                              "--ratio", "none"])
    from_cli = apply_overrides(Toy(), overrides_from_args(args, Toy))
    from_py = apply_overrides(Toy(), size=32, lr=0.5, flag=True, classes=("a", "b"), ratio=None)
    assert from_cli == from_py


def test_presets_then_overrides():
    cfg = from_preset(Toy, PRESETS, "big", {"lr": 0.1})
    assert (cfg.size, cfg.lr) == (128, 0.1)
    with pytest.raises(ConfigError, match="unknown preset"):
        from_preset(Toy, PRESETS, "huge")


def test_json_round_trip(tmp_path):
    cfg = apply_overrides(Toy(), classes=("x",), ratio=0.5)
    save_json(cfg, tmp_path / "c.json")
    assert load_json(Toy, tmp_path / "c.json") == cfg


def test_coerce_none_only_for_optional():
    assert coerce("ratio", "None", float | None) is None
    with pytest.raises(ConfigError):
        coerce("size", None, int)
