"""The edges of the unattended loop (issue 24): kills at exact file operations in promote, rollback and a run's
finish (tests/killpoint.py sends a real SIGKILL or SIGTERM), a nightly job that never wedges, SIGTERM handled as
SIGINT, and no exit 1 but a closed reader: a planted bug exits 70 with its traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TRAIN_ARGS, run_cli
from tests.conftest import fake_run as make_fake_run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FINISHED = {"status": "finished", "monitor": "val_accuracy", "best": {"epoch": 1, "val_accuracy": 0.5},
            "images": {"train": 4, "val": 2, "skipped": 0}, "classes": ["a", "b"],
            "promotion": {"promoted": True, "applied": True, "reason": "test"}}


def vgg_at(op: str, pattern: str, n: int, sig: str, *args: str, cwd: Path | None = None, timeout: int = 900):
    """vgg ARGS in a subprocess, stopped by SIG just before the Nth os.OP on a path matching PATTERN."""
    return subprocess.run([sys.executable, "-m", "tests.killpoint", op, pattern, str(n), sig, *args],
                          capture_output=True, text=True, env=ENV, cwd=cwd or ROOT, timeout=timeout)


def fake_run(runs: Path, name: str, summary: dict | None = FINISHED) -> Path:
    return make_fake_run(runs, name, summary)


def history(runs: Path) -> list[tuple[str, str]]:
    return [(e["run"], e["how"]) for e in json.loads((runs / ".production.json").read_text())["history"]]


def production(runs: Path) -> str:
    return (runs / "production").resolve().name


# ---------------------------------------------------------------------------------- production and its history


def test_promote_killed_before_the_link_moves_is_completed_once(tmp_path):
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        fake_run(runs, name)
    assert run_cli(["promote", "a", "--runs-dir", str(runs)])[0] == 0
    r = vgg_at("replace", "*/production", 1, "KILL", "promote", "b", "--runs-dir", str(runs))
    assert r.returncode == -9, r.stderr
    assert production(runs) == "a"  # the link did not move: the history says it was going to
    code, out, err = run_cli(["promote", "b", "--runs-dir", str(runs)])
    assert code == 0 and production(runs) == "b", err
    assert history(runs) == [("a", "promote"), ("b", "promote")]  # b once, not twice
    assert "pending" not in json.loads((runs / ".production.json").read_text())


def test_rollback_killed_after_the_history_is_written_really_goes_back(tmp_path):
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        fake_run(runs, name)
        assert run_cli(["promote", name, "--runs-dir", str(runs)])[0] == 0
    r = vgg_at("replace", "*/production", 1, "KILL", "rollback", "--runs-dir", str(runs))
    assert r.returncode == -9 and production(runs) == "b", r.stderr
    code, out, err = run_cli(["rollback", "--runs-dir", str(runs)])
    assert code == 0 and out.strip() == "a" and production(runs) == "a", err
    assert history(runs) == [("a", "rollback")]
    code, out, err = run_cli(["rollback", "--runs-dir", str(runs)])  # nothing older: now it is true
    assert code == 66 and "nothing to roll back to" in err


def test_rollback_under_sigterm_is_one_line_and_completed_by_the_next_command(tmp_path):
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        fake_run(runs, name)
        assert run_cli(["promote", name, "--runs-dir", str(runs)])[0] == 0
    r = vgg_at("replace", "*/production", 1, "TERM", "rollback", "--runs-dir", str(runs))
    assert r.returncode == 75, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "SIGTERM" in r.stderr and "Traceback" not in r.stderr
    code, out, err = run_cli(["runs", "--runs-dir", str(runs), "--json"])
    code, out, err = run_cli(["rollback", "--runs-dir", str(runs)])
    assert code == 0 and production(runs) == "a" and history(runs) == [("a", "rollback")], err


@pytest.mark.parametrize("text, what", [("{not json", "damaged (not valid JSON"),
                                        ('{"history": [{"at": "x"}]}', "damaged (not a list of runs)")])
def test_a_damaged_history_is_one_line_and_never_reset(tmp_path, text, what):
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        fake_run(runs, name)
    (runs / ".production.json").write_text(text)
    for args in (["promote", "b"], ["rollback"]):
        code, out, err = run_cli([*args, "--runs-dir", str(runs)])
        assert code == 65 and what in err and err.count("\n") == 1, err
    assert (runs / ".production.json").read_text() == text


# ---------------------------------------------------------------------------------- runs that wedged the night


def test_bare_resume_skips_a_half_made_run(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "half", summary=None)  # killed after config.yaml, before data.json
    code, out, err = run_cli(["train", "--resume", f"output.dir={runs}"])
    assert code == 66 and "no unfinished run to resume" in err, err


def test_resume_refuses_overrides_that_change_what_trains_before_loading_anything(tmp_path):
    t0 = time.perf_counter()
    code, out, err = run_cli(["train", "--resume", str(tmp_path), "train.epochs=3"])
    assert code == 64 and "train.epochs=3" in err and "cache.dir" in err, err
    assert time.perf_counter() - t0 < 5


# ---------------------------------------------------------------------------------- exit codes


def test_a_planted_bug_exits_70_with_its_traceback(tmp_path, monkeypatch):
    from vgg_cli.promotion import production

    def broken(runs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(production, "list_runs", broken)
    from click.testing import CliRunner

    from vgg_cli.cli.main import main

    result = CliRunner().invoke(_Main(main), ["runs", "--runs-dir", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 70
    assert "Traceback" in result.stderr and "RuntimeError: planted bug" in result.stderr
    assert "this is a bug in vgg" in result.stderr


class _Main:
    name = "vgg"

    def __init__(self, main):
        self._main = main

    def main(self, args=None, **_):
        self._main(list(args or []))


@pytest.mark.parametrize("args", [["config", "show"], ["config", "defaults"]])
def test_stdout_on_a_full_disk_is_74_not_a_traceback(args):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "vgg_cli", *args], stdout=full, stderr=subprocess.PIPE,
                           text=True, env=ENV, timeout=120)
    assert r.returncode == 74 and "could not write the output" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------- with real training (slow)


def _train(data: Path, runs: Path, *extra: str, report: bool = False) -> list[str]:
    """A 2-epoch run; without ``report`` no end-of-run evaluation (these tests are about the protocol)."""
    return ["train", f"data.train_dir={data}", f"output.dir={runs}", *TRAIN_ARGS, "train.epochs=2",
            f"output.report={str(report).lower()}", *extra]


@pytest.mark.slow
def test_a_kill_between_history_and_link_at_the_end_of_a_run_is_finished_once(tmp_path, colour_data):
    runs = tmp_path / "runs"
    assert run_cli(_train(colour_data, runs, "output.name=first", "promote.min_accuracy=0"))[0] == 0
    r = vgg_at("replace", "*/production", 1, "KILL", *_train(colour_data, runs, "output.name=second",
                                                                "promote.min_accuracy=0"))
    assert r.returncode == -9, r.stderr[-2000:]
    code, out, err = run_cli(["train", "--resume", f"output.dir={runs}", "--json"])
    assert code in (0, 3), err
    summary = json.loads((runs / "second" / "summary.json").read_text())
    assert summary["promotion"]["applied"] is True
    names = [name for name, _ in history(runs)]
    assert names == (["first", "second"] if summary["promotion"]["promoted"] else ["first"])
    assert production(runs) == names[-1]


@pytest.mark.slow
def test_sigterm_or_a_kill_at_the_report_is_finished_by_resume(tmp_path, colour_data):
    runs = tmp_path / "runs"
    r = vgg_at("replace", "*/report.html", 1, "TERM", *_train(colour_data, runs, "output.name=n1", report=True))
    assert r.returncode == 75 and "vgg train --resume" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert not (runs / "n1" / "report.html").exists()
    code, out, err = run_cli(["train", "--if-changed", *_train(colour_data, runs, report=True)[1:]])
    assert code in (0, 3) and (runs / "n1" / "report.html").is_file(), err
    assert json.loads((runs / "n1" / "summary.json").read_text())["promotion"]["applied"] is True


@pytest.mark.slow
def test_an_unresumable_run_is_set_aside_and_a_new_run_trains(tmp_path, colour_data):
    runs = tmp_path / "runs"
    r = vgg_at("replace", "*/checkpoints/epoch-0002.*", 1, "KILL", *_train(colour_data, runs, "output.name=cut"))
    assert r.returncode == -9, r.stderr[-2000:]
    (runs / "cut" / "state.json").write_text("{damaged")
    (runs / "cut" / "config.yaml").write_text("")
    nights = [run_cli(["train", "--if-changed", "--json", *_train(colour_data, runs)[1:]]) for _ in range(2)]
    assert [code in (0, 3) for code, _, _ in nights] == [True, True], nights[0][2][-3000:]
    assert "set aside unfinished run cut, which cannot be resumed" in nights[0][2]
    assert json.loads(nights[1][1])["status"] == "nothing_to_do"
    aside = json.loads((runs / "cut" / "set_aside.json").read_text())
    assert aside["run"] == "cut" and "damaged" in aside["reason"]
    code, out, err = run_cli(["train", "--resume", f"output.dir={runs}"])  # nothing left to resume
    assert code == 66 and "no unfinished run" in err
    new = [p for p in runs.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
           and p.name != "cut"]
    assert len(new) == 1  # the second night had nothing to do
    assert json.loads((new[0] / "summary.json").read_text())["set_aside"][0]["run"] == "cut"


NO_FRAMEWORK = """import sys
from vgg_cli.cli.main import main
try:
    main()
except SystemExit as e:
    code = e.code
print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'jax', 'torch'}), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_a_night_with_nothing_to_do_loads_no_framework(tmp_path, colour_data):
    """The --if-changed decision needs no framework: an unchanged night answers "nothing to do" before Keras (and
    TensorFlow) load; a changed one trains, its dataset scanned once (one "dataset ..." line, in train.log too)."""
    import shutil

    runs, data = tmp_path / "runs", tmp_path / "photos"
    shutil.copytree(colour_data, data)
    code, out, err = run_cli(["train", "--if-changed", *_train(data, runs)[1:]])
    assert code in (0, 3), err[-3000:]
    first = out.strip()
    r = subprocess.run([sys.executable, "-c", NO_FRAMEWORK, "train", "--if-changed", *_train(data, runs)[1:]],
                       capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == first and "nothing to do: the dataset and the config are unchanged" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "[]"  # not even Keras
    from PIL import Image

    Image.new("RGB", (32, 32), (250, 10, 10)).save(next(p for p in data.iterdir() if p.is_dir()) / "tonight.png")
    code, out, err = run_cli(["train", "--if-changed", *_train(data, runs)[1:]])
    assert code in (0, 3), err[-3000:]
    assert out.strip() != first
    said = [line for line in err.splitlines() if line.startswith("dataset ") and " classes, " in line]
    assert len(said) == 1 and said[0] in (Path(out.strip()) / "train.log").read_text()


@pytest.mark.slow
def test_a_garbled_light_checkpoint_is_damaged_input_and_the_night_sets_the_run_aside(tmp_path, colour_data):
    """A delta whose bytes are garbled (a bad CRC inside, the zip still whole) is damaged input, not a bug: --resume
    says so in one line (66) and the night sets the run aside and trains, instead of exiting 70 every night."""
    runs = tmp_path / "runs"
    args = _train(colour_data, runs, "output.name=cut", "train.epochs=4")
    r = vgg_at("replace", "*/state.json", 3, "KILL", *args)  # killed before epoch 3's commit: 1-2 committed
    assert r.returncode == -9, r.stderr[-2000:]
    state = json.loads((runs / "cut" / "state.json").read_text())
    delta = runs / "cut" / state["checkpoint"]
    assert state["epoch"] == 2 and delta.name.endswith(".delta.npz")
    data = bytearray(delta.read_bytes())
    start, n = len(data) // 4, max(1, len(data) // 50)
    data[start:start + n] = bytes((b + 77) % 256 for b in data[start:start + n])
    delta.unlink()
    delta.write_bytes(bytes(data))
    code, out, err = run_cli(["train", "--resume", str(runs / "cut")])
    assert code == 66 and "Traceback" not in err and err.count("error:") == 1, err[-3000:]
    assert "could not be loaded" in err and "start a new run" in err.strip().splitlines()[-1]
    code, out, err = run_cli(["train", "--if-changed", "--json", *_train(colour_data, runs, "train.epochs=4")[1:]])
    assert code in (0, 3), err[-3000:]
    assert "set aside unfinished run cut, which cannot be resumed" in err
    assert json.loads((runs / "cut" / "set_aside.json").read_text())["run"] == "cut"
    assert json.loads(out)["status"] == "trained"


@pytest.mark.slow
def test_latest_follows_the_run_order_not_the_clock(tmp_path, colour_data):
    runs = tmp_path / "runs"
    assert run_cli(_train(colour_data, runs, "output.name=one"))[0] in (0, 3)
    future = time.time() + 86400
    for p in (runs / "one").rglob("*"):
        os.utime(p, (future, future))
    os.utime(runs / "one", (future, future))
    assert run_cli(_train(colour_data, runs, "output.name=two", "train.seed=7"))[0] in (0, 3)
    assert (runs / "latest").resolve().name == "two"


@pytest.mark.slow
def test_a_copied_run_resumes_in_its_new_place(tmp_path, colour_data):
    runs = tmp_path / "runs"
    r = vgg_at("replace", "*/checkpoints/epoch-0002.*", 1, "KILL", *_train(colour_data, runs, "output.name=moved",
                                                                               "model.freeze_blocks=[1,2,3,4,5]"))
    assert r.returncode == -9, r.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run(["cp", "-a", str(runs / "moved"), str(elsewhere / "moved")], check=True)
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    cache = tmp_path / "cache"
    code, out, err = run_cli(["train", "--resume", str(elsewhere / "moved"), f"cache.dir={cache}"])
    assert code in (0, 3), err
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before  # nothing written where it came from
    assert json.loads((elsewhere / "moved" / "summary.json").read_text())["status"] == "finished"
    assert (elsewhere / "latest").resolve().name == "moved" and any(p.is_file() for p in cache.rglob("*"))


# ---------------------------------------------------------------------------------- full and read-only disks


def _mount(mnt: Path, size: str) -> Path:
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:100]}): the disk-full tests need root")
    return mnt


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (root only: mounting needs it), and room for a second one; unmounted after the test."""
    mounted = [_mount(tmp_path / "disk", "2m")]
    yield mounted[0]
    for mnt in (tmp_path / "disk", tmp_path / "big"):
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _fill(mnt: Path) -> None:
    with open(mnt / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def test_a_full_disk_before_the_lock_exists_is_74(small_disk, tmp_path):
    from tests.conftest import make_colour_dataset

    data = make_colour_dataset(tmp_path / "data", per_class=2)
    _fill(small_disk)
    r = subprocess.run([sys.executable, "-m", "vgg_cli", "train", f"data.train_dir={data}",
                        f"output.dir={small_disk / 'runs'}"], capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 74 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0 and ".lock" in r.stderr and "disk full" in r.stderr


@pytest.mark.slow
def test_exports_to_a_full_or_read_only_disk_are_74(small_disk, trained_run):
    out = small_disk / "sm"
    code, stdout, err = run_cli(["export", "--run", str(trained_run["run_dir"]), "--format", "saved_model",
                                 "--out", str(out)])
    assert code == 74 and "Traceback" not in err and "sm" in err, err[-2000:]
    assert [p.name for p in small_disk.iterdir()] == []  # nothing half-written left behind
    big = _mount(small_disk.parent / "big", "1g")
    subprocess.run(["cp", "-a", str(trained_run["run_dir"]), str(big / "run")], check=True)
    subprocess.run(["mount", "-o", "remount,ro", str(big)], check=True)
    code, stdout, err = run_cli(["export", "--run", str(big / "run"), "--format", "tflite"])
    assert code == 74 and "Traceback" not in err, err[-2000:]


@pytest.mark.slow
def test_a_killed_export_leaves_nothing_after_the_next_one(tmp_path, trained_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["run_dir"], run, symlinks=True)
    r = vgg_at("replace", "*/export/model.tflite", 1, "KILL", "export", "--run", str(run), "--format", "tflite")
    assert r.returncode == -9, r.stderr[-2000:]
    assert [p.name for p in (run / "export").iterdir() if p.name.startswith(".model.tflite.")]  # the leftover
    code, out, err = run_cli(["export", "--run", str(run), "--format", "tflite"])
    assert code == 0, err
    assert [p.name for p in (run / "export").iterdir() if p.name.startswith(".")] == []


def test_a_deleted_current_folder_is_one_line(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    code = f"import os; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); from vgg_cli.cli.main import main; " \
           f"main(['train', 'data.train_dir={tmp_path}', 'output.dir=runs'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 74 and "current folder was deleted" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.slow
def test_kills_while_a_run_is_made_or_scanned_never_wedge_the_next_command(tmp_path, colour_data):
    runs = tmp_path / "runs"
    r = vgg_at("replace", "*/data.json", 1, "KILL", *_train(colour_data, runs, "output.name=half"))
    assert r.returncode == -9 and (runs / "half" / "config.yaml").is_file(), r.stderr[-2000:]
    code, out, err = run_cli(["train", "--resume", f"output.dir={runs}"])  # half-made: not resumable
    assert code == 66 and "no unfinished run to resume" in err, err
    r = vgg_at("replace", "*/.cache/scan-*.json", 1, "TERM", *_train(colour_data, runs))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 75 and "SIGTERM" in lines[-1] and "Traceback" not in r.stderr, r.stderr[-2000:]
    code, out, err = run_cli(["train", "--if-changed", *_train(colour_data, runs)[1:]])
    assert code in (0, 3), err


@pytest.mark.slow
def test_resume_refuses_damaged_state_rows_and_repairs_a_damaged_classes_file(tmp_path, colour_data):
    runs = tmp_path / "runs"
    r = vgg_at("replace", "*/checkpoints/epoch-0002.*", 1, "KILL", *_train(colour_data, runs, "output.name=r"))
    assert r.returncode == -9, r.stderr[-2000:]
    state = runs / "r" / "state.json"
    good = state.read_text()
    state.write_text(json.dumps({**json.loads(good), "rows": [1, 2, 3]}))
    code, out, err = run_cli(["train", "--resume", str(runs / "r")])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 65 and len(errors) == 1 and "state.json is unreadable" in errors[0] and "Traceback" not in err
    state.write_text(good)
    (runs / "r" / "classes.json").write_text('["red", "gre')
    code, out, err = run_cli(["train", "--resume", str(runs / "r")])
    assert code in (0, 3) and "writing it again from data.json" in err, err
    assert json.loads((runs / "r" / "classes.json").read_text()) == ["blue", "green", "red"]


@pytest.mark.slow
def test_a_second_ctrl_c_still_says_how_to_resume(tmp_path, colour_data):
    import signal as sig

    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "vgg_cli", *_train(colour_data, runs, "output.name=c",
                                                                      "train.epochs=30")],
                            stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stderr:
        if line.startswith("epoch 1/30"):
            break
    proc.send_signal(sig.SIGINT)
    time.sleep(0.05)
    proc.send_signal(sig.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=300)
    last = rest.strip().splitlines()[-1]
    assert proc.returncode == 75 and last.startswith("error: ") and "vgg train --resume" in last, rest
    assert "Traceback" not in rest


def test_check_table_columns_line_up(tmp_path):
    from tests.conftest import make_colour_dataset

    data = make_colour_dataset(tmp_path / "d", per_class=3, classes=["red", "blue"])
    code, out, err = run_cli(["check", str(data), f"output.dir={tmp_path / 'runs'}"])
    table = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(table) == 3 and len({len(line) for line in table}) == 1, out  # the header as wide as the rows
    assert [line.index("train") + 5 for line in table[:1]] == [len(table[1]) - 7]


def test_a_second_signal_swallowed_by_a_gc_callback_prints_no_traceback(monkeypatch):
    """The second Ctrl-C's KeyboardInterrupt can land inside a garbage-collector callback (JAX registers one; Keras
    imports JAX when it is installed), where Python ignores it and prints "Exception ignored ... Traceback". While
    a run is stopping anyway (the first signal), that one is dropped; any other unraisable still reaches the hook
    that was there before."""
    import gc

    from vgg_cli.training.callbacks import StopOnSignal

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))

    def interrupted(phase, info):
        raise KeyboardInterrupt

    def broken(phase, info):
        raise RuntimeError("a real bug in a callback")

    stopper = StopOnSignal()
    with stopper:
        stopper.signal_name = "SIGINT"  # the first signal arrived: the run stops at the next batch boundary
        for callback in (interrupted, broken):
            gc.callbacks.append(callback)
            try:
                gc.collect()
            finally:
                gc.callbacks.remove(callback)
    assert KeyboardInterrupt not in reported and RuntimeError in reported, reported
    assert sys.unraisablehook is not stopper._unraisable  # put back
