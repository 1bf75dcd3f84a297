"""Every promise of an unattended run kept on hostile input: a kill during promotion, full disks (real tmpfs),
damaged run files, a damaged production run, symlinks out of the dataset, and the lock before the framework."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import SIZE, make_colour_dataset, run_cli, tree_hashes
from tests.test_cli_cron import FAST, NO_REPORT, start, wait_for


@pytest.fixture
def data(tmp_path) -> Path:
    return make_colour_dataset(tmp_path / "photos", per_class=10, seed=11)


def history(runs: Path) -> list[str]:
    return [e["run"] for e in json.loads((runs / ".production.json").read_text())["history"]]


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


# ------------------------------------------------------------------------------------- promotion and kills


def _champion(data: Path, runs: Path) -> None:
    code, _, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", *NO_REPORT, "train.epochs=2",
                            "output.name=champ"])
    assert code == 0, err


def _kill_during_promotion(data: Path, runs: Path, name: str, *extra: str) -> Path:
    """Train ``name`` for real and SIGKILL it as soon as its last epoch is done (it is then comparing itself with
    production, a whole-network pass over the validation images of both models)."""
    proc = start(["train", f"data.train_dir={data}", f"output.dir={runs}", *FAST, "train.epochs=2",
                  f"output.name={name}", *extra])
    wait_for(proc, "done: best")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    run = runs / name
    promotion = summary_of(run)["promotion"]
    assert promotion.get("pending") or promotion.get("applied") is False, promotion  # killed before it ended
    assert (runs / "production").resolve() == (runs / "champ").resolve()
    return run


@pytest.mark.slow
def test_sigkill_during_promotion_is_finished_by_resume_exactly_once(tmp_path, data):
    runs = tmp_path / "runs"
    _champion(data, runs)
    run = _kill_during_promotion(data, runs, "night")
    code, out, err = run_cli(["train", "--resume", f"output.dir={runs}", "--json"])  # in this process
    assert code in (0, 3), err
    result = json.loads(out)
    assert result["status"] == "trained" and result["run"] == str(run.resolve())
    assert "was stopped before its promotion was carried out: finishing it" in err
    promotion = summary_of(run)["promotion"]
    assert promotion["applied"] is True and "pending" not in promotion
    assert promotion["production_accuracy"] is not None and result["promoted"] == promotion["promoted"]
    expected = "night" if promotion["promoted"] else "champ"
    assert (runs / "production").resolve().name == expected
    assert history(runs) == ["champ"] + (["night"] if promotion["promoted"] else [])
    assert (runs / "latest").resolve() == run.resolve()
    # decided once: nothing is left to resume, and carrying a decision out again changes nothing
    code, _, err = run_cli(["train", "--resume", f"output.dir={runs}"])
    assert code == 66 and "no unfinished run" in err
    s = summary_of(run)
    s["promotion"]["applied"] = False  # as if killed between moving production and recording that
    (run / "summary.json").write_text(json.dumps(s))
    code, _, err = run_cli(["train", "--resume", str(run)])
    assert code in (0, 3), err
    assert history(runs) == ["champ"] + (["night"] if promotion["promoted"] else [])
    assert summary_of(run)["promotion"]["applied"] is True


@pytest.mark.slow
def test_sigkill_during_promotion_is_finished_by_the_next_if_changed(tmp_path, data):
    runs = tmp_path / "runs"
    _champion(data, runs)
    run = _kill_during_promotion(data, runs, "cron")
    nightly = ["train", f"data.train_dir={data}", f"output.dir={runs}", *FAST, "train.epochs=2", "output.name=cron",
               "--if-changed", "--json"]
    code, out, err = run_cli(nightly)
    assert code in (0, 3), err
    assert json.loads(out)["run"] == str(run.resolve()) and "finishing it" in err
    assert summary_of(run)["promotion"]["applied"] is True
    code, out, err = run_cli(nightly)  # the night after: nothing changed
    assert code == 0 and json.loads(out)["status"] == "nothing_to_do", err


@pytest.mark.slow
def test_damaged_production_run_is_reported_and_not_compared(tmp_path, data):
    runs = tmp_path / "runs"
    _champion(data, runs)
    (runs / "champ" / "classes.json").write_text('["red", "gre')  # cut short
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", *NO_REPORT,
                              "train.epochs=2", "output.name=second", "--json"])
    assert code == 0, err
    warning = [x for x in err.splitlines() if "cannot be compared" in x]
    assert len(warning) == 1 and "classes.json" in warning[0] and "not valid JSON" in warning[0]
    promotion = json.loads(out)["promotion"]
    assert promotion["promoted"] is True and "production_unreadable" in promotion
    assert (runs / "production").resolve().name == "second"
    # a production model cut short: the same
    best = runs / "second" / "model" / "best.keras"
    best.unlink()
    (runs / "second" / "model" / "last.keras").unlink()
    best.write_bytes(b"PK\x03\x04 cut short")
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", *NO_REPORT,
                              "train.epochs=2", "output.name=third", "--json"])
    assert code == 0 and "Traceback" not in err, err
    assert "production run second cannot be compared" in err and json.loads(out)["promoted"] is True


# ------------------------------------------------------------------------------------ damaged run files


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    d = make_colour_dataset(root / "photos", per_class=6, seed=2)
    code, out, err = run_cli(["train", f"data.train_dir={d}", f"output.dir={root / 'runs'}", *NO_REPORT,
                              "train.epochs=2", "output.name=base"])
    assert code == 0, err
    return root / "runs" / "base"


def _unfinished_copy(finished_run: Path, tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    run = runs / "r"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()  # as if killed before the summary: resume picks it up
    return run


@pytest.mark.parametrize("damage, code, needle", [
    ("data.json", 65, "run manifest .* is damaged \\(not valid JSON"),
    ("config.yaml-empty", 65, "is empty or lacks its data/model sections"),
    ("checkpoint", 66, "checkpoint .* is not a whole .keras file .* the run cannot be resumed from it"),
    ("lambda", 66, "holds code \\(a Lambda layer\\) that Keras' safe mode refuses"),
    ("state.json", 65, "state.json is unreadable"),
])
@pytest.mark.slow
def test_resume_of_a_damaged_run_is_one_line(finished_run, tmp_path, damage, code, needle):
    run = _unfinished_copy(finished_run, tmp_path)
    ckpt = run / "model" / "checkpoints" / "epoch-0002.keras"
    if damage == "data.json":
        text = (run / "data.json").read_text()
        (run / "data.json").write_text(text[: len(text) // 2])
    elif damage == "config.yaml-empty":
        (run / "config.yaml").write_text("")
    elif damage == "checkpoint":
        data = ckpt.read_bytes()
        ckpt.unlink()
        ckpt.write_bytes(data[: len(data) // 3])
    elif damage == "lambda":
        import keras

        model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
        ckpt.unlink()
        model.save(ckpt)
    elif damage == "state.json":
        (run / "state.json").write_text('{"epoch": 2, "rows": [')
    got, out, err = run_cli(["train", "--resume", str(run)])
    assert got == code, err
    assert "Traceback" not in err and err.count("error:") == 1
    import re

    assert re.search(needle, err.strip().splitlines()[-1]), err


@pytest.mark.parametrize("name", ["summary.json", "run.json"])
def test_half_written_summary_or_run_info_is_rebuilt_on_resume(finished_run, tmp_path, name):
    run = _unfinished_copy(finished_run, tmp_path)
    if name == "summary.json":
        (run / "summary.json").write_text('{"status": "finished", "best": {')
    else:
        (run / "run.json").write_text('{"started": "2026')
    code, out, err = run_cli(["train", "--resume", str(run), "--json"])
    assert code == 0, err
    assert "Traceback" not in err and ("continuing from state.json" in err or "rebuilding it" in err)
    s = summary_of(run)
    assert s["status"] == "finished" and s["epochs_run"] == 2 and s["promotion"]["applied"] is True


# ------------------------------------------------------------------------------------------ full disks


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real, small tmpfs: writes past its size fail with ENOSPC."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"vgg-test-{uuid.uuid4().hex[:8]}",
                        str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_disk_full_while_keras_writes_the_checkpoint_is_exit_74(tmp_path, data):
    """Room for config.yaml, data.json and the logs, not for the 60 MB checkpoint (Keras' HDF5 temp file)."""
    with tmpfs(tmp_path / "small", "2m") as small:
        runs = small / "runs"
        before = tree_hashes(data)
        code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={runs}", *FAST, "train.epochs=2",
                                  "output.name=full"])
        assert code == 74, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: could not write") and "epoch-0001.keras" in line and "disk full" in line
        assert "Traceback" not in err
        leftovers = [p.name for p in (runs / "full" / "model" / "checkpoints").iterdir()]
        assert leftovers == []  # neither our temp file nor Keras' HDF5 one
        assert tree_hashes(data) == before


def test_disk_full_in_the_feature_cache_is_exit_74(tmp_path, data):
    with tmpfs(tmp_path / "cache", "64k") as cache:
        code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={tmp_path / 'runs'}", *FAST,
                                  "train.epochs=1", f"cache.dir={cache}"])
        assert code == 74, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: could not write the feature cache in") and "disk full" in line
        assert "cache.features=off" in line and "Traceback" not in err


# ------------------------------------------------------------------------------------ the dataset tree


def test_symlinks_never_loop_cross_classes_or_walk_twice(tmp_path):
    from vgg_cli.config.schema import load_config
    from vgg_cli.data.scan import scan

    root = make_colour_dataset(tmp_path / "ds", per_class=3, classes=["red", "green"])
    outside = make_colour_dataset(tmp_path / "elsewhere", per_class=2, classes=["blue", "red"], seed=3)
    (root / "green" / "root").symlink_to("/")  # an ancestor of everything: the whole machine
    (root / "red" / "up").symlink_to("..")  # the dataset root: a loop through the other class
    (root / "red" / "sub").mkdir()
    (root / "red" / "sub" / "again").symlink_to("..")  # a loop inside the class
    (root / "red" / "sub" / "other").symlink_to(root / "green")  # another class
    (root / "red" / "more").symlink_to(outside / "red")  # more red images out of the tree: followed
    (root / "red" / "more-again").symlink_to(outside / "red")  # the same folder twice: walked once
    (root / "red" / "sub" / "file.png").symlink_to(outside / "blue" / "blue_000.png")  # a file link: followed
    (root / "blue").symlink_to(outside / "blue")  # a class link: followed
    deep = root / "green"
    for i in range(34):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    before = tree_hashes(root)
    index = scan(load_config(None, [f"data.train_dir={root}", f"data.image_size={SIZE}"]).data)
    got = sorted((index.classes[e.label], e.path) for e in index.files)
    assert got == sorted([("red", f"red/red_00{i}.png") for i in range(3)] + [("red", "red/sub/file.png")]
                         + [("red", f"red/more/red_00{i}.png") for i in range(2)]
                         + [("green", f"green/green_00{i}.png") for i in range(3)]
                         + [("blue", f"blue/blue_00{i}.png") for i in range(2)])
    left_out = {s["path"]: s["reason"] for s in index.skipped}
    assert "leads back to a folder that contains it" in left_out.pop("green/root/")
    assert "leads back to a folder that contains it" in left_out.pop("red/up/")
    assert "leads back to a folder that contains it" in left_out.pop("red/sub/again/")
    assert "another part of the dataset" in left_out.pop("red/sub/other/")
    assert list(left_out) == ["green/" + "/".join(f"d{i}" for i in range(33)) + "/"]
    assert "more than 32 folder levels" in left_out.popitem()[1]
    code, out, _ = run_cli(["check", str(root), f"output.dir={tmp_path / 'runs'}"])  # the dataset doctor says so
    assert code == 65 and "5 folder(s) not walked" in out and "not walked: red/sub/other/: " in out
    assert tree_hashes(root) == before


def test_output_dir_inside_the_dataset_is_a_config_error_and_writes_nothing(tmp_path, data):
    before = tree_hashes(data)
    code, out, err = run_cli(["train", f"data.train_dir={data}", f"output.dir={data / 'runs'}", *FAST])
    assert code == 78 and "never writes into a dataset" in err and err.count("\n") == 1
    assert tree_hashes(data) == before and not (data / "runs").exists()


# -------------------------------------------------------------------------------------------- the lock


def test_the_lock_is_refused_before_keras_is_imported(tmp_path, data):
    runs = tmp_path / "runs"
    probe = ("import atexit, sys; atexit.register(lambda: print('keras imported' if 'keras' in sys.modules else "
             "'keras not imported', file=sys.stderr)); from vgg_cli.cli.main import main; main(sys.argv[1:])")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from vgg_cli.runs.root import RunsRoot\nwith RunsRoot(sys.argv[1]).lock('holder'):\n"
                               "    print('held', flush=True); time.sleep(120)", str(runs)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["train", f"data.train_dir={data}", f"output.dir={runs}"],
                     ["train", "--resume", str(runs / "x")]):
            if args[1] == "--resume":
                (runs / "x").mkdir()
                (runs / "x" / "config.yaml").write_text("data: {}")
            r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            assert r.returncode == 75, r.stderr
            assert "another vgg run holds the lock" in r.stderr and "holder" in r.stderr
            assert r.stderr.strip().splitlines()[-1] == "keras not imported"
    finally:
        holder.kill()
        holder.wait(timeout=30)
