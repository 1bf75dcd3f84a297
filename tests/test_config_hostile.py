"""Hostile configuration values through the real CLI: each is one `error: ...` line with exit code 78, quickly,
naming the key, the source that set it and the rule, and quoting at most a capped piece of the value.

Nothing here trains: `vgg config show` validates and prints; `vgg train` validates its config before it looks at
the dataset (a missing one here), so a config error there comes first.
"""

from __future__ import annotations

import time

import pytest
import yaml

from tests.conftest import run_cli

LONGEST_LINE = 1000  # every error line below stays far under this (values are quoted at most 200 characters)


def config_error(args: list[str], *needles: str) -> str:
    """Run vgg; assert exit 78 and exactly one short `error:` line on stderr holding every needle; return it."""
    code, _, err = run_cli(args)
    assert code == 78, (code, err[-3000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert len(lines[0]) < LONGEST_LINE, lines[0][:3000]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def shown_config(args: list[str]) -> dict:
    code, out, err = run_cli(["config", "show", *args])
    assert code == 0, err[-3000:]
    return yaml.safe_load(out)


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# 1. integers beyond any range --------------------------------------------------------------------------------


def test_a_hundred_thousand_digit_epochs_in_a_file_is_a_config_error(tmp_path):
    big = write(tmp_path, "train:\n  epochs: " + "9" * 100_000 + "\n")
    line = config_error(["config", "show", "--config", str(big)], "'train.epochs'", "config file",
                        "1..10000", "100000 characters long")
    assert "9" * 201 not in line


@pytest.mark.parametrize("digits", [29, 5000])  # 5000: beyond Python's own 4300-digit limit for int("...")
def test_a_huge_epochs_override_names_the_range(digits):
    text = "train.epochs=" + "9" * digits
    config_error(["config", "show", text], "'train.epochs'", "from override 'train.epochs=999",
                 "less than or equal to 10000 (a whole number 1..10000)")


def test_vgg_train_refuses_the_huge_epochs_before_looking_at_the_data(tmp_path):
    config_error(["train", f"data.train_dir={tmp_path / 'missing'}", "train.epochs=99999999999999999999999999999"],
                 "'train.epochs'", "1..10000")


@pytest.mark.parametrize("override, needle", [
    ("train.batch_size=65537", "1..65536"),
    ("data.image_size=1025", "32..1024"),
    ("train.early_stopping_patience=10001", "0..10000"),
    ("finetune.epochs=10001", "0..10000"),
    ("train.schedule.step_epochs=10001", "1..10000"),
    ("train.schedule.warmup_epochs=10001", "less than or equal to 10000"),
    ("cache.ram_mb=99999999999", "0..16777216"),
    ("output.keep=100001", "1..100000"),
    ("train.gpus=[1024]", "below 1024"),
    ("train.seed=0x" + "f" * 390, "0..4294967295"),  # hexadecimal: no digit limit, still out of range
    ("train.optimizer.learning_rate=1" + "0" * 400, "finite number > 0"),  # an int no float can hold
    ("train.class_weight={a: 1" + "0" * 400 + "}", "finite numbers > 0"),
    ("data.val_split=1" + "0" * 400, "valid number"),
])
def test_integer_keys_have_documented_upper_bounds(override, needle):
    config_error(["config", "show", override], f"'{override.split('=')[0]}'", needle)


def test_the_bounds_themselves_are_accepted():
    cfg = shown_config(["train.epochs=10000", "train.batch_size=65536", "data.image_size=1024",
                        "model.head.dense=[16384]", "output.keep=100000", "output.name=" + "a" * 200])
    assert cfg["train"]["epochs"] == 10000 and cfg["model"]["head"]["dense"] == [16384]


def test_default_yaml_documents_the_ranges():
    code, out, _ = run_cli(["config", "defaults"])
    assert code == 0
    for doc in ("epochs: 10                  # (int 1..10000)", "(int 1..65536)", "(list of at most 10 int 1..16384)",
                "(int 0..10000) stop after", "at most 200 bytes"):
        assert doc in out, doc


# 2. output.name is one folder name -----------------------------------------------------------------------------


def test_a_300_character_output_name_is_refused_with_the_rule():
    line = config_error(["config", "show", "output.name=" + "a" * 300], "'output.name'", "at most 200 bytes",
                        "this one has 300")
    assert "a" * 201 not in line  # the value (and the override naming it) are quoted capped


@pytest.mark.parametrize("name", ['"run\\0x"', '"run\\nx"', "a/b", "'a\\b'", "é" * 101])
def test_output_names_with_nul_separators_or_too_many_bytes_are_refused(tmp_path, name):
    f = write(tmp_path, f"output:\n  name: {name}\n")
    config_error(["config", "show", "--config", str(f)], "'output.name'", "plain folder name", "config file")


@pytest.mark.parametrize("key", ["output.dir", "data.train_dir", "data.val_dir", "cache.dir", "model.weights"])
def test_a_nul_in_any_path_is_a_config_error_not_a_traceback(tmp_path, key):
    section, leaf = key.split(".")
    f = write(tmp_path, f'{section}:\n  {leaf}: "x\\0y"\n')
    config_error(["config", "show", "--config", str(f)], f"'{key}'", "NUL")


# 3. a head too large to build --------------------------------------------------------------------------------------


def test_a_billion_unit_dense_layer_is_a_config_error():
    config_error(["config", "show", "model.head.dense=[1000000000]"], "'model.head.dense'", "at most 16384",
                 "[1000000000]")
    config_error(["config", "show", "model.head.dense=[8,8,8,8,8,8,8,8,8,8,8]"], "at most 10 dense layers")


# 4. YAML alias bombs, nesting and big values: refused fast, quoted capped ------------------------------------------


def _laughs(levels: int = 9, as_mapping: bool = True) -> str:
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    parts = ["&a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    parts += [f"&{n} [" + ",".join([f"*{names[i]}"] * 9) + "]" for i, n in enumerate(names[1:])]
    if as_mapping:
        return "{" + ", ".join(f"{n}: {p}" for n, p in zip(names, parts)) + "}"
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize("as_mapping", [True, False])
def test_an_alias_bomb_in_a_file_is_refused_in_well_under_two_seconds(tmp_path, as_mapping):
    bomb = write(tmp_path, "data:\n  classes: " + _laughs(as_mapping=as_mapping) + "\n")
    assert len(bomb.read_bytes()) < 400
    start = time.monotonic()
    config_error(["config", "show", "--config", str(bomb)], "config file", "line 2", "data.classes", "aliases")
    assert time.monotonic() - start < 2


def test_an_alias_bomb_as_an_override_is_refused_fast():
    start = time.monotonic()
    config_error(["config", "show", "data.classes=" + _laughs()], "override 'data.classes=", "aliases")
    assert time.monotonic() - start < 2


def test_a_few_aliases_still_work(tmp_path):
    f = write(tmp_path, "model:\n  freeze_blocks: &b [1, 2, 3]\nfinetune:\n  epochs: 1\n  unfreeze_blocks: *b\n")
    assert shown_config(["--config", str(f)])["finetune"]["unfreeze_blocks"] == [1, 2, 3]


@pytest.mark.parametrize("value", ["[" * 5000, "{a: " * 3000, "&x [a, *x]"])
def test_deep_or_self_referring_values_are_refused_fast(value):
    start = time.monotonic()
    config_error(["config", "show", f"data.classes={value}"], "override", "refused")
    assert time.monotonic() - start < 2


def test_a_big_value_is_quoted_capped():
    line = config_error(["config", "show", "train.class_weight={" + ", ".join(f"c{i}: -1" for i in range(5000)) + "}"],
                        "'train.class_weight'", "finite numbers > 0", "...")
    assert "c4999" not in line
    config_error(["config", "show", "model.freeze_blocks=[" + ",".join(["0"] * 5000) + "]"], "between 1 and 5")


# 5. an empty override is not a silent choice --------------------------------------------------------------------------


def test_an_empty_model_weights_says_what_to_write():
    config_error(["config", "show", "model.weights="], "'model.weights' = '' (empty)", "from override 'model.weights='",
                 "imagenet", "none", "production", "latest", "path to a weights file", "unset shell variable")


def test_vgg_train_refuses_an_empty_model_weights_before_anything_else(tmp_path):
    config_error(["train", f"data.train_dir={tmp_path / 'missing'}", "model.weights="], "'model.weights'")


def test_null_weights_still_mean_none_and_empty_keys_with_null_defaults_stay_null():
    cfg = shown_config(["model.weights=null", "output.name=", "data.val_dir="])
    assert cfg["model"]["weights"] == "none" and cfg["output"]["name"] is None and cfg["data"]["val_dir"] is None
    config_error(["config", "show", "data.train_dir="], "'data.train_dir'", "must name the dataset folder")
    config_error(["config", "show", "output.dir="], "'output.dir'", "must name a folder")


# 6. the error names the source that set the bad value ---------------------------------------------------------------


def test_a_mapping_for_a_number_in_the_file_is_blamed_on_the_file(tmp_path):
    f = write(tmp_path, "train:\n  epochs: {value: 3}\n")
    line = config_error(["config", "show", "--config", str(f)], "'train.epochs' = {'value': 3} from config file")
    assert "override" not in line
    line = config_error(["config", "show", "--config", str(f), "train.batch_size=4"], "from config file")
    assert "override" not in line


def test_an_override_replaces_the_files_bad_value_instead_of_being_blamed_for_it(tmp_path):
    f = write(tmp_path, "train:\n  epochs: {value: 3}\n")
    assert shown_config(["--config", str(f), "train.epochs=1"])["train"]["epochs"] == 1


def test_a_key_below_a_leaf_is_blamed_on_its_override_not_the_defaults(tmp_path):
    line = config_error(["config", "show", "train.epochs.x=5"], "'train.epochs' = {'x': 5}",
                        "from override 'train.epochs.x=5'")
    assert "the defaults" not in line
    f = write(tmp_path, "train:\n  epochs: {value: 3}\n")
    config_error(["config", "show", "--config", str(f), "train.epochs.x=5"],
                 f"from config file '{f}' and override 'train.epochs.x=5'")


def test_a_section_override_blames_itself_for_its_keys(tmp_path):
    line = config_error(["config", "show", "train={epochs: 0}"], "'train.epochs' = 0 from override 'train={epochs: 0}'")
    assert "the defaults" not in line
    f = write(tmp_path, "train:\n  batch_size: 4\n")
    config_error(["config", "show", "--config", str(f), "train.epochs=0"], "from override 'train.epochs=0'")
    g = write(tmp_path, "train:\n  epochs: 0\n", "g.yaml")
    config_error(["config", "show", "--config", str(g), "train.batch_size=4"], f"from config file '{g}'")


def test_class_weights_from_file_and_override_merge_and_share_the_blame(tmp_path):
    f = write(tmp_path, "train:\n  class_weight: {red: 1, green: 2}\n")
    cfg = shown_config(["--config", str(f), "train.class_weight.blue=3"])
    assert cfg["train"]["class_weight"] == {"red": 1.0, "green": 2.0, "blue": 3.0}
    config_error(["config", "show", "--config", str(f), "train.class_weight.red=0"],
                 "from config file", "and override 'train.class_weight.red=0'")
