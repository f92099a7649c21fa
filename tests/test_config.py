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


@dataclass
class Lists:
    xs: tuple[float, ...] = (1.0,)
    names: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def test_papermill_literal_strings():
    cfg = apply_overrides(Lists(), xs="[0.5, 1]", names="('a', 'b')", extra="{'base': 8}")
    assert (cfg.xs, cfg.names, cfg.extra) == ((0.5, 1.0), ["a", "b"], {"base": 8})
    assert apply_overrides(Lists(), xs="0.5, 2").xs == (0.5, 2.0)  # the CLI's comma form still works
    for name, value in (("xs", "[0.5,"), ("xs", "['a']"), ("extra", "[1]"), ("extra", 3)):
        with pytest.raises(ConfigError, match=name) as err:
            apply_overrides(Lists(), {name: value})
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,expected", [("false", False), ("No", False), ("0", False), ("off", False),
                                           ("true", True), ("YES", True), ("1", True)])
def test_bool_strings(text, expected):
    assert coerce("flag", text, bool) is expected


def test_numpy_scalars_are_accepted():
    import numpy as np

    assert coerce("size", np.int64(3), int) == 3 and type(coerce("size", np.int64(3), int)) is int
    assert coerce("flag", np.bool_(True), bool) is True


def test_typed_keywords_coerce_every_annotated_argument():
    from cxr_utils.config import typed_keywords

    calls = []

    @typed_keywords
    def job(n: int, rate: float = 0.5, overwrite: bool = False, name: str | None = None, data=None):
        calls.append((n, rate, overwrite, name, data))
        return overwrite

    assert job("3", rate="1", overwrite="false", name="None", data="kept") is False
    assert calls[-1] == (3, 1.0, False, None, "kept")
    assert job(2, overwrite="yes") is True
    for kwargs, match in (({"overwrite": "maybe"}, "overwrite"), ({"overwrite": 1}, "overwrite"),
                          ({"rate": "fast"}, "rate")):
        with pytest.raises(ConfigError, match=match):
            job(1, **kwargs)
    assert len(calls) == 2  # a destructive flag never acts on a truthy string or number


def test_check_same_settings_lists_every_changed_key(tmp_path):
    from cxr_utils.config import check_same_settings

    saved = {"a": 1, "b": [1, 2], "c": "x", "d": 0}
    check_same_settings(saved, {"a": 1, "b": (1, 2), "c": "x", "d": 5}, {"d"}, "a study", tmp_path)
    with pytest.raises(ConfigError) as err:
        check_same_settings(saved, {"a": 2, "b": (1, 2), "c": "y", "d": 0, "e": 1}, set(), "a study", tmp_path)
    message = str(err.value)
    assert message == (f"{tmp_path} holds a study with other settings (a: 1 -> 2; c: 'x' -> 'y'; "
                       f"e: None -> 1); use another folder")


def test_evaluate_keywords_arrive_as_strings():
    from cxr_utils import evaluate

    with pytest.raises(ConfigError, match="progress"):
        evaluate.evaluate_run("nowhere", progress="maybe")
    with pytest.raises(ConfigError, match="--n must be >= 2"):  # "1" was read as the integer 1
        evaluate.evaluate_run("nowhere", n="1", progress="false")
    with pytest.raises(ConfigError, match="seed"):
        evaluate.evaluate(None, None, None, seed="five")


def test_evaluate_reads_extractor_lists_in_every_form():
    from cxr_utils import evaluate

    for given in ("offline,clip", "['offline', 'clip']", ("offline", "clip")):
        with pytest.raises(ConfigError, match=r"unknown feature extractor\(s\) \['clip'\]"):
            evaluate.evaluate(None, None, None, extractors=given)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_python_and_numpy_values_are_refused(value):
    import numpy as np

    for v in (value, np.float64(value), np.float32(value)):
        with pytest.raises(ConfigError, match="expected a finite number"):
            coerce("lr_g", v, float)
        with pytest.raises(ConfigError, match="expected a finite number"):
            coerce("kimg", v, float | None)
    assert coerce("lr_g", np.float32(0.5), float) == 0.5 and coerce("lr_g", "2e-4", float) == 2e-4


def test_typed_keywords_refuse_non_finite_floats_before_any_work(tmp_path):
    from cxr_utils import evaluate

    for text in ("nan", "-inf", "Infinity"):
        with pytest.raises(ConfigError, match=f"^holdout_fraction: expected a finite number, got '{text}'$"):
            evaluate.evaluate_run(tmp_path / "missing", holdout_fraction=text)
