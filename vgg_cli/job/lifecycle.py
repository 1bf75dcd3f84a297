"""`vgg train` as one job, in the order it happens: open -> prepare -> fit -> finish -> decide -> apply.

``open_job`` decides, before any framework loads, what this process is: the run to resume (if any), its backend,
its place in a multi-process job, and the runs folder (built once here, for the lock and everything after it). The
caller holds ``TrainJob.lock()`` and loads the framework, then ``run`` trains (or resumes) through
``vgg_cli.training.run`` (prepare + fit: the session, ``vgg_cli.training.session``) and finishes the run through
``vgg_cli.job.finish`` (finish, decide, apply). Training never imports promotion or prediction; ``promotion/``
keeps only the decision and the production changes.

A run killed between training and its finish keeps ``promotion: pending``; ``vgg train --resume`` and
``--if-changed`` come back here and finish it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from vgg_cli.config.schema import Config, load_run_config
from vgg_cli.data.layout import apply_layout
from vgg_cli.data.scan import check_layout, require_dir
from vgg_cli.errors import InterruptedRun, VggError, signal_name
from vgg_cli.fsio import read_json
from vgg_cli.job.finish import apply, decide, finish
from vgg_cli.platform.backend import choose, load_frameworks
from vgg_cli.platform.distribute import process_role
from vgg_cli.runs.root import RunsRoot
from vgg_cli.runs.rundir import EvaluationDir, RunDir

log = logging.getLogger("vgg")


@dataclass(frozen=True)
class TrainJob:
    """What ``vgg train`` was asked, decided once: the config, the runs folder, the run to resume (or None), the
    backend and the process's role in a multi-process job (None: a single process)."""
    cfg: Config
    runs: RunsRoot
    resume: Path | None
    backend: str
    role: tuple[int, int] | None
    if_changed: bool = False
    overrides: tuple[str, ...] = ()  # --resume's KEY=VALUE (``vgg_cli.training.RESUME_OVERRIDES``)
    command: str = "vgg train"
    run_cfg: Config | None = None  # the resumed run's own config.yaml, read once (None: unreadable, or no resume)

    @property
    def chief(self) -> bool:
        return self.role is None or self.role[1] == 0

    def lock(self):
        """The runs folder's lock, taken once for the whole job (never in a multi-worker job's other workers)."""
        return self.runs.lock(self.command) if self.chief else contextlib.nullcontext()


def open_job(cfg: Config, resume: str | None = None, if_changed: bool = False, overrides: tuple[str, ...] = (),
             command: str = "vgg train") -> TrainJob:
    """Decide the job before the framework loads: a mistyped dataset path or an unknown run to resume makes no runs
    folder and loads nothing."""
    runs, run_dir, run_cfg = RunsRoot.of(cfg), None, None
    settings = cfg.train
    if resume is not None:  # the newest unfinished run (bare --resume), else a folder or a run name in output.dir
        run_dir = runs.find_resumable() if resume == "" else runs.resolve(resume)
        runs = RunsRoot.of_run(run_dir)  # a run continues in the folder it sits in
        run_cfg = _run_config(run_dir)
        settings = run_cfg.train if run_cfg is not None else cfg.train.model_copy(
            update={"backend": "auto", "distribute": "auto"})
    else:
        check_dataset_layout(cfg)
    moves = tuple(o for o in overrides if not o.startswith("output.dir="))
    role = process_role(settings.distribute, choose(settings.backend)[0])
    return TrainJob(cfg, runs, run_dir, settings.backend, role, if_changed, moves, command, run_cfg)


def run(job: TrainJob):
    """Take the runs folder's lock (before the framework loads, so a second run on the same output.dir exits 75 at
    once), load Keras on ``job.backend``, train (or resume) and finish: a ``vgg_cli.training.run.TrainResult``."""
    with job.lock():
        index = None
        if job.if_changed and job.role is None:  # a night with nothing to do loads no framework
            from vgg_cli.training.nightly import nothing_to_do  # deferred: a scan, only for --if-changed

            skip, index = nothing_to_do(job.cfg, job.runs)
            if skip is not None:
                return skip
        load_frameworks(job.backend)
        from vgg_cli.training.run import resume_training, run_training

        if job.resume is not None:
            result = resume_training(job.resume, job.runs, job.role, job.overrides, job.run_cfg)
        else:
            result = run_training(job.cfg, job.runs, role=job.role, if_changed=job.if_changed, index=index)
        return complete(result)


def complete(result):
    """Finish a trained run (``vgg_cli.job.finish``: finish, decide, apply); anything else comes back as it is."""
    from vgg_cli.training.callbacks import attach_log_file, detach_log_file

    f = result.to_finish
    if f is None:
        return result
    session, summary = f.session, result.summary
    handler = attach_log_file(session.paths.log, None) if session.device.is_chief else None  # the decision too
    try:
        evaluation = finish(session, summary)
        decide(session, summary, f.best, evaluation)
        summary = apply(session, summary)
    except KeyboardInterrupt as e:
        text = (f"stopped by {signal_name(e)} while finishing run {session.paths.name} (its evaluation, promotion "
                f"or report); it is trained and kept, and its promotion is decided and applied exactly once: "
                f"finish it with vgg train --resume {session.paths.root}")
        log.warning(text, extra={"console": False})
        raise InterruptedRun(text) from None
    finally:
        if handler is not None:
            detach_log_file(handler)
    return replace(result, summary=summary, to_finish=None)


def check_dataset_layout(cfg: Config) -> None:
    """Every layout and path error before the framework loads (folder names only, no image opened): a missing
    folder, class folders and split folders mixed, one class, no class folders."""
    require_dir(cfg.data.train_dir, "data.train_dir")
    laid, _ = apply_layout(cfg)
    for key in ("val_dir", "test_dir"):
        if getattr(laid.data, key) is not None:
            require_dir(getattr(laid.data, key), f"data.{key}")
    check_layout(laid.data)


def _run_config(run_dir: Path) -> Config | None:
    """The config a run to resume was started with (its config.yaml over today's defaults: keys added since are
    at their defaults, backend and distribute ``auto``), or None when it cannot be read: the resume then says why,
    in one line, with the run's other checks."""
    try:
        return load_run_config(RunDir(Path(run_dir)).config)
    except VggError:
        return None


WORST = 3  # classes shown as the worst, by recall


def results(run_dir: Path) -> dict:
    """{"results": {"val"|"test": accuracy, top-5, images, worst classes}, "report": report.html} of a trained
    run, from its evaluations (read back: nothing is computed again)."""
    run, out = RunDir(Path(run_dir)), {}
    for name in ("val", "test"):
        try:
            r = read_json(EvaluationDir(run.evaluation(name)).report)
        except VggError:
            continue
        worst = sorted((c for c in r.get("per_class", []) if c.get("recall") is not None and c["recall"] < 1.0),
                       key=lambda c: (c["recall"], -c["support"]))[:WORST]  # a class at recall 1 is not "worst"
        out[name] = {"accuracy": r["accuracy"], "top5_accuracy": r.get("top5_accuracy"), "images": r["images"],
                     "worst_classes": [{k: c[k] for k in ("class", "recall", "precision", "support")}
                                       for c in worst]}
    return {"results": out, "report": str(run.report) if run.report.is_file() else None} if out else {}
