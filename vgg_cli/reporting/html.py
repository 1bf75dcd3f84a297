"""The HTML primitives of report.html (``report``, ``data_quality``): the page's style and its picture check,
escaping, tables, inline pictures, the page itself. Nothing here knows a run."""

from __future__ import annotations

import base64
import html
from pathlib import Path

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #1f2328; }
h1 { font-size: 1.5em; margin-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #d0d7de; padding: .25em .6em; }
th { background: #f6f8fa; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #d0d7de; margin: .4em 0; } .muted, .caption { color: #59636e; }
.pair { display: flex; gap: 1em; flex-wrap: wrap; } .pair img { max-width: 48%; } .caption { margin: 0 0 .4em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }
#broken { display: none; background: #ffebe9; border: 1px solid #cf222e; padding: .6em; }
.badges { display: flex; gap: .5em; flex-wrap: wrap; margin: .2em 0 1em; }
.badge { border-radius: 2em; padding: .15em .8em; font-weight: 600; border: 1px solid; white-space: nowrap; }
.green { background: #dafbe1; color: #116329; border-color: #4ac26b; } .grey { background: #f6f8fa; color: #59636e;
  border-color: #d0d7de; } .amber { background: #fff8c5; color: #7d4e00; border-color: #d4a72c; }
.red { background: #ffebe9; color: #a40e26; border-color: #ff8182; }
.headline { display: grid; grid-template-columns: repeat(4, 1fr); gap: .7em; margin: 0 0 1em; }
.tile { border: 1px solid #d0d7de; border-radius: 8px; padding: .6em .9em; min-width: 0; }
.tile .k { color: #59636e; font-size: .85em; text-transform: uppercase; letter-spacing: .04em; }
.tile .v { font-size: 1.55em; font-weight: 600; line-height: 1.25; overflow-wrap: anywhere; }
.tile .s { color: #59636e; font-size: .9em; overflow-wrap: anywhere; } .tile.main, .tile.wide { grid-column: span 2; }
.tile.main { background: #f6f8fa; } .tile.main .v { font-size: 2.8em; }
.tile.wide .v { font-size: 1.1em; font-family: ui-monospace, monospace; }
.callout { border-left: 4px solid; border-radius: 4px; padding: .5em .9em; margin: 0 0 1em; }
.cam-scale { display: inline-block; width: 14em; height: .9em; vertical-align: middle; border: 1px solid #d0d7de;
  background: linear-gradient(to right, #00007f, #00f, #007fff, #0ff, #7fff7f, #ff0, #ff7f00, #f00, #7f0000); }
@media (max-width: 700px) { .headline { grid-template-columns: repeat(2, 1fr); } }
"""

CHECK_IMAGES = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-images-total", imgs.length);
  document.body.setAttribute("data-images-decoded", imgs.length - bad.length);
  if (bad.length) {
    var note = document.getElementById("broken");
    note.textContent = bad.length + " picture(s) of this report could not be shown: " +
      bad.map(function (i) { return i.alt; }).join(", ");
    note.style.display = "block";
    console.error(note.textContent);
  }
});
"""


class Raw(str):
    """Markup made here, put into a table as is."""


def esc(value) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value), quote=True)


def picture(path: Path, alt: str) -> str:
    """An <img> with the PNG inside it; a missing file is said in words."""
    try:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    except OSError:
        return f'<p class="muted">({esc(alt)}: {esc(Path(path).name)} is missing)</p>'
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(head: list[str] | None, rows: list[list], numeric: set[int] = frozenset()) -> str:
    """A table; ``head`` None: a key/value table, keys as row headers."""
    if head is None:
        return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{esc(c)}</td>'
                                   for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def num(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def page(title: str, sections: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{CSS}</style>"
            f"<script>{CHECK_IMAGES}</script></head><body><h1>{esc(title)}</h1><div id=broken></div>"
            + "".join(sections) + "</body></html>\n")
