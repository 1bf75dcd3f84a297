"""The runs folder's one owner (vgg_cli/runs/root.py): the lock taken once per command, the runs folder taken from
--config's output.dir by every command that reads runs, a lock that says so where POSIX locks are missing, and the
typed summary that reads old and damaged files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TRAIN_ARGS, fake_run, run_cli

ROOT = Path(__file__).resolve().parents[1]


FINISHED = {"status": "finished", "monitor": "val_accuracy", "best": {"epoch": 2, "val_accuracy": 0.75},
            "images": {"train": 8, "val": 4, "skipped": 0}, "classes": ["a", "b"],
            "promotion": {"promoted": True, "applied": True, "reason": "x"}}


@pytest.mark.slow
def test_vgg_train_takes_the_lock_once(tmp_path, colour_data):
    runs = tmp_path / "runs"
    args = ["train", "-v", f"data.train_dir={colour_data}", f"output.dir={runs}", *TRAIN_ARGS, "train.epochs=1",
            "output.report=false"]
    code, out, err = run_cli(args)
    assert code == 0, err
    assert err.count("holding the lock on") == 1, err
    code, out, err = run_cli([*args, "--if-changed"])
    assert code == 0 and "nothing to do" in err and err.count("holding the lock on") == 1, err


def test_commands_that_read_runs_take_the_config_output_dir(tmp_path):
    runs = tmp_path / "elsewhere"
    fake_run(runs, "r1", FINISHED)
    config = tmp_path / "my.yaml"
    config.write_text(f"output:\n  dir: {runs}\n")
    code, out, err = run_cli(["runs", "--config", str(config), "--json"])
    assert code == 0 and json.loads(out.splitlines()[0])["run"] == "r1", err
    code, out, err = run_cli(["promote", "r1", "--config", str(config)])
    assert code == 0 and (runs / "production").resolve() == (runs / "r1").resolve(), err
    # --runs-dir wins over the config; the default is the defaults' output.dir (runs, in the current folder)
    code, out, err = run_cli(["runs", "--config", str(config), "--runs-dir", str(tmp_path / "none")])
    assert code == 0 and "no runs in" in err
    for command in (["predict", "x.png"], ["evaluate"], ["export", "--format", "onnx"]):
        code, out, err = run_cli([*command, "--config", str(config), "--run", "nosuch"])
        assert code == 66 and str(runs / "nosuch") in err, (command, err)


def test_vgg_runs_reads_old_and_damaged_summaries(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "a-old", FINISHED)  # written before "schema" existed: version 1
    fake_run(runs, "b-new", {**FINISHED, "schema": 2})
    fake_run(runs, "c-damaged", {**FINISHED, "images": [1, 2, 3]})
    fake_run(runs, "d-unfinished", None)
    code, out, err = run_cli(["runs", "--runs-dir", str(runs), "--json"])
    assert code == 0, err
    rows = {r["run"]: r for r in map(json.loads, out.splitlines())}
    assert rows["a-old"]["status"] == rows["b-new"]["status"] == "finished"
    assert rows["a-old"]["images"] == 12 and rows["a-old"]["best"] == 0.75 and rows["a-old"]["promoted"] is True
    assert rows["c-damaged"]["status"] == "damaged" and rows["d-unfinished"]["status"] == "unfinished"


def test_summary_parse_names_the_field_of_the_wrong_type():
    from vgg_cli.errors import DataError
    from vgg_cli.runs.summary import RunStatus, Summary

    s = Summary.parse(dict(FINISHED), "x/summary.json")
    assert s.status is RunStatus.FINISHED and s.trained_to_end and not s.needs_finishing and s.schema == 1
    assert Summary.parse({**FINISHED, "promotion": {"pending": True}}).needs_finishing
    with pytest.raises(DataError, match=r"x/summary.json: 'best' is list"):
        Summary.parse({**FINISHED, "best": [1]}, "x/summary.json")
    with pytest.raises(DataError, match="unknown status 'exploded'"):
        Summary.parse({**FINISHED, "status": "exploded"})
    assert Summary.parse(dict(FINISHED)).to_json()["schema"] == 3


def test_the_summary_is_a_type_with_no_free_keys_and_every_older_file_reads():
    from vgg_cli.runs.summary import SCHEMA, RunStatus, Summary

    # a schema-1 file (no "schema"), a schema-2 one with its optional fields, and keys this vgg does not know
    v1 = {**FINISHED, "counts": {"a": {"train": 4}}, "timings": {"epochs_s": 1.5}}
    v2 = {**v1, "schema": 2, "drift": {"tested": False}, "calibration": {"temperature": 1.2}, "input": None,
          "retired_key": [1, 2]}
    for old, schema in ((v1, 1), (v2, 2)):
        s = Summary.parse(old)
        assert s.schema == schema and s.status is RunStatus.FINISHED and s.classes == ["a", "b"]
        assert s.best_value == 0.75 and s.images_total == 12 and s.timings == {"epochs_s": 1.5}
        back = s.to_json()
        assert back["schema"] == SCHEMA == 3 and back["status"] == "finished"
        assert {k: v for k, v in back.items() if k != "schema"} == {
            **{k: None for k in back if k not in ("schema",)}, "health": {}, "resumed": [], **{
                k: v for k, v in old.items() if k != "schema"}}  # every field written, the unknown kept
        assert Summary.parse(back) == Summary.parse({**old, "schema": SCHEMA})  # written and read back: the same
    s = Summary.parse(v2)
    assert s.unknown == {"retired_key": [1, 2]} and s.calibration == {"temperature": 1.2}
    with pytest.raises(AttributeError):
        s.a_free_key = 1  # a writer sets a declared field or nothing
    assert Summary().empty and not s.empty


def test_without_posix_locks_reading_works_and_locking_is_one_line(tmp_path):
    """Where the OS has no file lock filelock can use (here: fcntl hidden, so only its soft lock is left), vgg imports
    and reads runs; taking the lock is one line, exit 69."""
    runs = tmp_path / "runs"
    fake_run(runs, "r1", FINISHED)
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import vgg_cli.inference.predict, vgg_cli.cli.main\n"
            "from vgg_cli.cli.main import main\n"
            "main(sys.argv[1:])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code, "runs", "--runs-dir", str(runs)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "r1" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", code, "promote", "r1", "--runs-dir", str(runs)], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 69, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "operating system's file locks" in r.stderr


def test_vgg_runs_lists_in_run_order_and_shows_production_now(tmp_path):
    runs = tmp_path / "runs"
    for seq, name in enumerate(["zz-first", "b45", "head"], start=1):  # names that sort otherwise
        run = fake_run(runs, name, FINISHED)
        (run / "run.json").write_text(json.dumps({"seq": seq, "resumed": []}))
    (runs / "zz-first" / "data.json").write_text("{}")
    for name in ("zz-first", "b45"):
        assert run_cli(["promote", name, "--runs-dir", str(runs)])[0] == 0
    assert run_cli(["rollback", "--runs-dir", str(runs)])[0] == 0  # production back to zz-first
    code, out, err = run_cli(["runs", "--runs-dir", str(runs)])
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:]]
    names = [r[1] if r[0] == "P" or r[0] == "PL" or r[0] == "L" else r[0] for r in rows]
    assert names == ["zz-first", "b45", "head"]
    production = {n: line.split()[-3] for n, line in zip(names, out.splitlines()[1:])}
    assert production == {"zz-first": "now", "b45": "before", "head": "before"}


def test_an_unknown_run_names_the_command_that_lists_runs(tmp_path):
    code, out, err = run_cli(["promote", "nosuch", "--runs-dir", str(tmp_path / "runs")])
    assert code == 66 and f"vgg runs --runs-dir {tmp_path / 'runs'}" in err and "ls " not in err, err


def test_predict_says_when_the_latest_run_has_other_classes_than_production(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "old", FINISHED)
    new = fake_run(runs, "new", {**FINISHED, "promotion": {"promoted": False, "applied": True, "reason": "x",
                                                             "class_change": {"added": ["c"], "removed": []}}})
    assert run_cli(["promote", "old", "--runs-dir", str(runs)])[0] == 0
    (runs / "old" / "model" / "best.keras").write_bytes(b"cut short")  # the note comes before the model loads
    (runs / "latest").symlink_to("new")
    image = tmp_path / "x.png"
    image.write_bytes(b"not an image")
    code, out, err = run_cli(["predict", str(image), "--runs-dir", str(runs)])
    assert "latest run new has other classes (added ['c']" in err and f"--run {new.name}" in err, err


def test_a_command_that_wrote_nothing_leaves_no_lock_behind(tmp_path):
    """The ImageNet download failing (or any error before a run is made) left an empty output.dir with a .lock in
    it; now the folder is gone when the command made it, and the .lock when nothing else was written. A folder
    with runs keeps its lock file (a later command takes it)."""
    from vgg_cli.runs.root import RunsRoot

    fresh = RunsRoot(tmp_path / "new" / "runs")
    with fresh.lock("test"):
        assert (fresh.path / ".lock").exists() and (fresh.path / ".lock.holder").exists()
    assert not fresh.path.exists() and (tmp_path / "new").is_dir()
    made = RunsRoot(tmp_path / "made")
    made.path.mkdir()
    with made.lock("test"):
        pass
    assert made.path.is_dir() and os.listdir(made.path) == []
    used = RunsRoot(tmp_path / "used")
    with used.lock("test"):
        (used.path / "run1").mkdir()
    assert sorted(os.listdir(used.path)) == [".lock", "run1"]
    with used.lock("test"):  # and it is taken again as before
        pass


def test_output_dir_that_is_a_file_is_named_as_such(tmp_path, colour_data):
    """Not "free space or fix permissions": the file in the way is named."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "runs"):
        code, _, err = run_cli(["train", str(colour_data), f"output.dir={out}", "model.weights=none"])
        assert code == 74 and err.count("\n") == 1, err
        assert f"'{afile}' is a file, not a folder" in err and "free space" not in err
