"""Config: defaults, deep merge, overrides, validation messages and exit codes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from vgg_cli.config.schema import default_dict, load_config
from vgg_cli.errors import ConfigError, NoInputError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate_and_configs_default_is_the_package_file():
    cfg = load_config()
    assert cfg.model.arch == "vgg16" and cfg.train.epochs == 10 and cfg.data.val_split == 0.2
    assert (ROOT / "configs" / "default.yaml").read_text() == (ROOT / "vgg_cli" / "config" / "default.yaml").read_text()


def _key_lines(node, prefix=""):
    """(dotted path, 0-based line of the key itself) for every key of a composed YAML mapping, leaves and branches."""
    for key, value in node.value:
        path = f"{prefix}{key.value}"
        yield path, key.start_mark.line, isinstance(value, yaml.MappingNode)
        if isinstance(value, yaml.MappingNode):
            yield from _key_lines(value, f"{path}.")


def _dotted_leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _dotted_leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_every_default_key_is_documented_with_a_type():
    """Each leaf key, by its full dotted path (finetune.epochs is not train.epochs), carries a '# (type) meaning'
    comment on its own line: the line YAML's composer places that key on."""
    text = (ROOT / "vgg_cli" / "config" / "default.yaml").read_text()
    lines = text.splitlines()
    keys = list(_key_lines(yaml.compose(text)))
    leaves = {path: line for path, line, branch in keys if not branch}
    assert set(leaves) == set(_dotted_leaves(default_dict()))  # the composed file is the tree vgg loads
    assert {"train.epochs", "finetune.epochs", "train.optimizer.learning_rate", "finetune.learning_rate"} <= set(leaves)
    for path, line in leaves.items():
        assert lines[line].lstrip().startswith(f"{path.rsplit('.', 1)[-1]}:"), (path, lines[line])
        assert "# (" in lines[line], f"{path} (line {line + 1}) lacks a '# (type) meaning' comment"


def test_user_file_deep_merges_and_overrides_win(tmp_path):
    user = tmp_path / "my.yaml"
    user.write_text("model:\n  head:\n    dense: [64, 32]\ntrain:\n  epochs: 4\n  optimizer: {learning_rate: 1e-4}\n")
    cfg = load_config(user, ["train.epochs=7", "data.train_dir=~/photos", "model.freeze_blocks=[5, 1, 1]"])
    assert cfg.model.head.dense == [64, 32]
    assert cfg.model.head.pooling == "avg"  # untouched sibling keeps its default
    assert cfg.train.optimizer.learning_rate == pytest.approx(1e-4)  # YAML '1e-4' string coerced
    assert cfg.train.optimizer.name == "adam"
    assert cfg.train.epochs == 7
    assert cfg.data.train_dir == str(Path.home() / "photos")
    assert cfg.model.freeze_blocks == [1, 5]


def test_weights_null_means_none():
    assert load_config(None, ["model.weights=null"]).model.weights == "none"


@pytest.mark.parametrize("override, needle", [
    ("train.epoch=3", "did you mean 'train.epochs'"),
    ("trian.epochs=3", "did you mean 'train'"),
    ("model.head.dropuot=0.1", "did you mean 'model.head.dropout'"),
])
def test_unknown_keys_get_a_suggestion(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


@pytest.mark.parametrize("override, needle", [
    ("train.epochs=ten", "'train.epochs' = 'ten'"),
    ("train.epochs=0", "greater than or equal to 1"),
    ("data.val_split=0.95", "'data.val_split' = 0.95"),
    ("data.image_size=16", "'data.image_size' = 16"),
    ("model.arch=vgg11", "'vgg16' or 'vgg19'"),
    ("model.freeze_blocks=[0, 6]", "blocks must be between 1 and 5"),
    ("model.head.pooling=mean", "'flatten', 'avg' or 'max'"),
    ("model.head.dense=[0]", "units >= 1"),
    ("train.optimizer.name=adagrad", "'adam', 'adamw', 'sgd' or 'rmsprop'"),
    ("train.optimizer.learning_rate=-1", "finite number > 0"),
    ("train.optimizer.learning_rate=.inf", "finite number > 0"),
    ("train.optimizer.learning_rate=.nan", "finite number > 0"),
    ("train.optimizer.learning_rate=fast", "a number > 0 or auto"),
    ("finetune.learning_rate=auto", "train.optimizer.learning_rate only"),
    ("train.epochs=true", "not true/false"),
    ("train.batch_size=false", "not true/false"),
    ("train.seed=-1", "greater than or equal to 0"),
    ("train.seed=1099511627776", "less than or equal to 4294967295"),
    ("train.schedule.warmup_epochs=.inf", "finite number"),
    ("train.class_weight={a: .inf}", "finite numbers > 0"),
    ("promote.min_accuracy=1.5", "auto (better than always guessing"),
    ("output.dir=''", "must name a folder"),
    ("train.mixed_precision=maybe", "'auto', 'on' or 'off'"),
    ("data.classes=[a]", "at least 2 classes"),
    ("data.classes=[a, a, b]", "more than once"),
    ("output.name=a/b", "plain folder name"),
    ("train.gpus=[-1]", ">= 0"),
])
def test_bad_values_name_key_value_and_fix(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg
    assert "override" in msg and "set a valid value" in msg


def test_wrong_section_key_suggests_the_key_of_that_name():
    with pytest.raises(ConfigError, match="did you mean 'train.optimizer.learning_rate'"):
        load_config(None, ["train.learning_rate=0.1"])


def test_auto_values_and_numbers_written_without_a_dot():
    cfg = load_config(None, [])
    assert cfg.train.optimizer.learning_rate == "auto" and cfg.promote.min_accuracy == "auto"
    cfg = load_config(None, ["train.optimizer.learning_rate=1e-3", "promote.min_accuracy=0.5"])
    assert cfg.train.optimizer.learning_rate == 0.001 and cfg.promote.min_accuracy == 0.5
    from vgg_cli.config.schema import auto_learning_rate

    assert auto_learning_rate([1, 2, 3, 4, 5]) == 1e-3
    assert auto_learning_rate([1, 2, 3]) == auto_learning_rate([]) == 1e-4


@pytest.mark.parametrize("key", ["output.dir", "cache.dir"])
def test_outputs_inside_the_dataset_are_refused(tmp_path, key):
    data = tmp_path / "photos"
    (data / "cats").mkdir(parents=True)
    for inside in (data / "runs", data / "cats" / "x", data):
        with pytest.raises(ConfigError, match=f"'{key}' .* is inside data.train_dir .* never writes into a dataset"):
            load_config(None, [f"data.train_dir={data}", f"{key}={inside}"])
    link = tmp_path / "link-to-photos"
    link.symlink_to(data)  # the same folder under another name
    with pytest.raises(ConfigError, match="never writes into a dataset"):
        load_config(None, [f"data.train_dir={data}", f"{key}={link / 'runs'}"])
    with pytest.raises(ConfigError, match="inside data.val_dir"):
        load_config(None, [f"data.train_dir={tmp_path / 'other'}", f"data.val_dir={data}", f"{key}={data / 'r'}"])
    load_config(None, [f"data.train_dir={data}", f"{key}={tmp_path / 'photos-runs'}"])  # a sibling is fine


def test_hostile_config_files(tmp_path):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("train:\n  epochs: 3  # réglé\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset \d+\); save it as UTF-8"):
        load_config(latin1, [])
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 30\n")
    with pytest.raises(ConfigError, match=r"line 4: invalid YAML \(duplicate key 'epochs'"):
        load_config(dup, [])
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        (tmp_path / "dup2.yaml").write_text("train: {epochs: 3}\ntrain: {epochs: 4}\n")
        load_config(tmp_path / "dup2.yaml", [])
    (tmp_path / "empty-run.yaml").write_text("")
    from vgg_cli.config.schema import load_run_config
    from vgg_cli.errors import DataError

    with pytest.raises(DataError, match="empty or lacks its data/model sections"):
        load_run_config(tmp_path / "empty-run.yaml")


def test_section_given_a_scalar_and_malformed_override():
    with pytest.raises(ConfigError, match="is a section"):
        load_config(None, ["train=3"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["train.epochs"])


def test_config_file_errors(tmp_path):
    with pytest.raises(NoInputError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("train:\n  epochs: -2\n")
    with pytest.raises(ConfigError, match=r"from config file .*bad.yaml"):
        load_config(bad)


def test_config_show_cli_prints_resolved_yaml_and_exit_78_on_error(tmp_path):
    code, out, _ = run_cli(["config", "show", "train.epochs=3", "model.arch=vgg19"])
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["train"]["epochs"] == 3 and shown["model"]["arch"] == "vgg19"
    assert load_config(None, []).to_dict().keys() == shown.keys()
    code, out, err = run_cli(["config", "show", "train.epochs=ten"])
    assert code == 78
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_help_and_config_show_do_not_import_tensorflow():
    code = ("import sys; from vgg_cli.cli.main import main\n"
            "try:\n    main(['config', 'show'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
    out = subprocess.run([sys.executable, "-m", "vgg_cli", "--help"], check=True, capture_output=True, text=True)
    assert "train" in out.stdout and "predict" in out.stdout


@pytest.mark.parametrize("cmd", [[], ["train"], ["predict"], ["summary"], ["config"], ["config", "show"],
                                 ["config", "defaults"], ["runs"], ["promote"], ["rollback"], ["check"]])
def test_help_on_every_command(cmd):
    code, out, _ = run_cli([*cmd, "--help"])
    assert code == 0 and "Usage:" in out


def test_version_and_usage_error_exit_codes():
    code, out, _ = run_cli(["--version"])
    assert code == 0 and "vgg, version" in out
    for args, needle in ((["train", "--no-such-flag"], "No such option '--no-such-flag'"),
                         (["predict", "x.jpg", "--top-k", "0"], "--top-k"),
                         (["predict", "x.jpg", "--format", "xml"], "'xml' is not one of"),
                         (["predict", "x.jpg", "--run", "a", "--model", "b"], "either --run or --model")):
        code, out, err = run_cli(args)
        assert code == 64 and out == "", args
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err and "--help'" in err, err


def test_config_defaults_prints_the_documented_file():
    code, out, _ = run_cli(["config", "defaults"])
    assert code == 0 and out == (ROOT / "configs" / "default.yaml").read_text()


@pytest.mark.parametrize("override,needle", [
    ("epochs=3", "did you mean 'train.epochs'?"),
    ("train.optimizer.lr=0.1", "did you mean 'train.optimizer.learning_rate'?"),
    ("imgsz=64", "did you mean 'data.image_size'?"),
    ("train.epochs=", "= null (empty)"),
])
def test_more_helpful_key_messages(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, [override])


@pytest.mark.parametrize("text,expected", [("on", "on"), ("off", "off"), ("true", "on"), ("'on'", "on"),
                                           ("auto", "auto")])
def test_yaml_on_off_for_mixed_precision(tmp_path, text, expected):
    # yaml.safe_load turns a bare on/off into a bool; both the override and a config file must still work
    assert load_config(None, [f"train.mixed_precision={text}"]).train.mixed_precision == expected
    f = tmp_path / "c.yaml"
    f.write_text(f"train:\n  mixed_precision: {text}\n")
    assert load_config(f).train.mixed_precision == expected


def test_yaml_words_on_off_yes_no_are_not_booleans(tmp_path):
    """YAML 1.1 would turn a run named `on` into True; only true/false are booleans here."""
    cfg = load_config(None, ["output.name=on", "output.tensorboard=no", "train.mixed_precision=off",
                             "cache.features=off"])
    assert cfg.output.name == "on" and cfg.output.tensorboard is False
    assert cfg.train.mixed_precision == "off" and cfg.cache.features == "off"
    f = tmp_path / "c.yaml"
    f.write_text("output:\n  name: yes\n  tensorboard: off\ntrain:\n  mixed_precision: on\n")
    cfg = load_config(f, ["promote.allow_class_change=true"])
    assert cfg.output.name == "yes" and cfg.output.tensorboard is False and cfg.train.mixed_precision == "on"
    assert cfg.promote.allow_class_change is True


def test_renamed_and_removed_keys_keep_old_configs_and_runs_working(tmp_path, monkeypatch, caplog):
    """The rename map: an old key in a config file, an override or an older run's config.yaml moves to its new
    name (or is dropped when removed) with a warning; giving both names is an error."""
    from vgg_cli.config import sources as config_sources
    from vgg_cli.config.schema import load_run_config

    monkeypatch.setattr(config_sources, "RENAMED", {"train.lr": "train.optimizer.learning_rate"})
    monkeypatch.setattr(config_sources, "REMOVED", {"train.old_knob": "nothing replaces it"})
    data = tmp_path / "data"
    data.mkdir()
    old = tmp_path / "old.yaml"
    old.write_text(f"data:\n  train_dir: {data}\ntrain:\n  lr: 0.0123\n  old_knob: 7\n  epochs: 2\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="vgg"):
        cfg = load_config(old)
    assert cfg.train.optimizer.learning_rate == 0.0123 and cfg.train.epochs == 2
    assert "'train.lr' is now 'train.optimizer.learning_rate'" in caplog.text
    assert "'train.old_knob' was removed" in caplog.text
    assert load_config(None, [f"data.train_dir={data}", "train.lr=0.5"]).train.optimizer.learning_rate == 0.5
    with pytest.raises(ConfigError, match="sets both 'train.lr' and its new name"):
        both = tmp_path / "both.yaml"
        both.write_text("train:\n  lr: 0.1\n  optimizer:\n    learning_rate: 0.2\n", encoding="utf-8")
        load_config(both)
    run_config = tmp_path / "run" / "config.yaml"  # an older run's own config, as --resume reads it
    run_config.parent.mkdir()
    run_config.write_text(f"data:\n  train_dir: {data}\nmodel:\n  arch: vgg16\ntrain:\n  lr: 0.003\n", encoding="utf-8")
    assert load_run_config(run_config).train.optimizer.learning_rate == 0.003


def test_the_config_digest_leaves_out_what_its_fields_declare(tmp_path):
    """--if-changed's digest: the sections marked NOT_IN_DIGEST (output, cache) and each key marked Since(old) at its
    old value are left out (declared on the fields in config/schema.py), so runs from before a key keep their
    digest; the same key at another value is a different job."""
    import hashlib
    import json

    from vgg_cli.config.digest import config_digest, digest_tree
    from vgg_cli.config.fields import Since

    data = tmp_path / "data"
    data.mkdir()
    base = load_config(None, [f"data.train_dir={data}", "model.head.norm=none"])  # none: what runs did before it
    tree = base.to_dict()
    since = {(section, key): m.old for section in tree if isinstance(tree[section], dict)
             for key in tree[section] for m in type(getattr(base, section)).model_fields[key].metadata
             if isinstance(m, Since)}
    assert set(since) == {("data", "test_dir"), ("data", "resize"), ("train", "backend"),
                          ("calibration", "temperature"), ("calibration", "ood"), ("calibration", "acceptance")}
    from vgg_cli.config.schema import old_values

    assert set(old_values()) == {".".join(k) for k in since} | {"model.head.norm"}  # a nested one too
    # what an older vgg hashed: the tree without output, cache, the later keys and the (then empty) calibration
    older = {s: {k: v for k, v in keys.items() if (s, k) not in since} for s, keys in tree.items()
             if s not in ("output", "cache", "calibration")}
    older["model"]["head"] = {k: v for k, v in older["model"]["head"].items() if k != "norm"}  # at none, its old
    assert digest_tree(base) == older
    assert config_digest(base) == hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()
    same = load_config(None, [f"data.train_dir={data}", "model.head.norm=none", f"output.dir={tmp_path / 'elsewhere'}",
                              "cache.ram_mb=7"])
    assert config_digest(same) == config_digest(base)
    for change in ("model.head.norm=standard", "data.resize=crop", "train.backend=jax", "calibration.ood=off",
                   "train.epochs=2"):
        changed = load_config(None, [f"data.train_dir={data}", "model.head.norm=none", change])
        assert config_digest(changed) != config_digest(base), change


def test_a_key_added_later_reads_as_before_in_an_old_run(tmp_path):
    """model.head.norm (2026-12-07): a run's config.yaml written before it exists reads as none, the head those runs
    have, whatever today's default; at none it leaves the config digest as it was, so those runs stay the same job."""
    import yaml

    from vgg_cli.config.digest import config_digest, digest_tree
    from vgg_cli.config.schema import load_config, load_run_config, old_values

    assert old_values()["model.head.norm"] == "none"
    tree = load_config(overrides=["model.head.norm=batch"]).to_dict()
    del tree["model"]["head"]["norm"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tree))
    old = load_run_config(tmp_path / "config.yaml")
    assert old.model.head.norm == "none"
    assert "norm" not in digest_tree(old)["model"]["head"]
    assert config_digest(old) != config_digest(load_config(overrides=["model.head.norm=batch"]))  # another job
    assert config_digest(old) == config_digest(load_config(overrides=["model.head.norm=none"]))
