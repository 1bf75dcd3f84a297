"""report.html's drift section: tonight's new images against the previous run's training images (summary.json
"drift", made by ``vgg_cli.training.prepare.night_drift`` with ``vgg_cli.data.drift``). Draws what it is handed."""

from __future__ import annotations

import html

from vgg_cli.data.drift import describe


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _rows(rows: list[list]) -> str:
    return "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)


def _table(head: list[str], rows: list[list]) -> str:
    return "<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>" + _rows(rows) + "</table>"


def drift_section(drift: dict | None, on_drift: str | None = None) -> str:
    """The section's HTML (an <h2> and what follows). ``drift``: summary.json's "drift" (None: a run from before
    the check, or a first run); ``on_drift``: the run's promote.on_drift, said beside a flagged verdict.
    ``data-drift`` on the section carries "flagged", "ok" or "untested" for scripts."""
    if not drift:
        return ('<section class=drift data-drift=untested><h2>Drift</h2><p class=muted>not recorded (a run from '
                'before the drift check)</p></section>')
    state = "untested" if not drift.get("tested") else "flagged" if drift.get("flagged") else "ok"
    badge = {"flagged": "red", "ok": "green", "untested": "grey"}[state]
    what = {"flagged": "drifted", "ok": "no drift", "untested": "not tested"}[state]
    out = [f"<section class=drift data-drift={state}><h2>Drift</h2>",
           f'<p><span class="badge {badge} drift">{what}</span> {_esc(describe(drift))}']
    if state == "flagged" and on_drift:
        out.append(f" <span class=muted>(promote.on_drift={_esc(on_drift)}: "
                   f"{'not promoted for it' if on_drift == 'hold' else 'judged as usual'})</span>")
    out.append("</p>")
    if drift.get("new_classes"):
        out.append("<p>New classes, left out of the test (promotion judges a class change): " +
                   _esc(", ".join(f"{c} ({n} images)" for c, n in sorted(drift["new_classes"].items()))) + "</p>")
    named = (("image statistics (MMD, RBF kernel)", drift.get("images")),
             ("class shares (chi-square)", drift.get("classes")),
             ("frozen features (MMD, RBF kernel)", drift.get("features")))
    tests = [[name, t.get("p"), t.get("mmd2", t.get("chi2"))] for name, t in named if t]
    if tests:
        out.append(_table(["test", "p-value", "statistic"], tests))
    if drift.get("stats"):
        out.append(_table(["statistic", "new images (mean)", "previous training images (mean)"],
                          [[k, v["new"], v["reference"]] for k, v in drift["stats"].items()]))
    shares = (drift.get("classes") or {}).get("shares")
    if shares:
        out.append(_table(["class", "share of the new images", "share of the previous training images"],
                          [[c, v["new"], v["reference"]] for c, v in shares.items()]))
    out.append("</section>")
    return "".join(out)
