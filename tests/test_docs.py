"""The documentation stays true to the code (fast, no training).

1. Every relative link in README.md and docs/*.md names a file that exists, and every ``#anchor`` names a heading
   of its target (GitHub's rule: lowercase, punctuation other than '-' and '_' dropped, spaces to '-', a repeated
   heading gets -1, -2, ...).
2. Every ``vgg ...`` command line in a fenced code block names a command that exists (``vgg config show`` and
   ``vgg config defaults`` included) and uses only options that command accepts, with a valid choice where the
   option has choices. Comment lines and outputs (lines that do not start with ``vgg``) are ignored.

Both checkers are also run on planted mistakes, so a checker that finds nothing would fail here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from vgg_cli.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`+[^`]*`+")
SHELL_STOP = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>", "2>&1", "&>"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(prose lines, fenced code lines), each as (line number, text)."""
    prose, code, inside = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append((number, line))
    return prose, code


def github_anchor(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        m = HEADING.match(line)
        if not m:
            continue
        base = github_anchor(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        prose, _ = split_fences(path.read_text(encoding="utf-8"))
        for number, line in prose:
            for target in LINK.findall(INLINE_CODE.sub("", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {target}"
                if not dest.exists():
                    bad.append(f"{where}: no such file")
                elif anchor:
                    if dest.suffix != ".md":
                        bad.append(f"{where}: an anchor into a file that is not Markdown")
                    elif anchor not in anchors(dest):
                        bad.append(f"{where}: no heading with that anchor in {dest.name}")
    return bad


def command_lines(files: list[Path]) -> list[tuple[str, str]]:
    """(where, line) for every `vgg ...` line in fenced code blocks, with backslash continuations joined."""
    out = []
    for path in files:
        _, code = split_fences(path.read_text(encoding="utf-8"))
        pending, start = "", 0
        for number, line in code:
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            full, pending = pending + line, ""
            stripped = full.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:].lstrip()
            if stripped.startswith("vgg ") or stripped == "vgg":
                name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                out.append((f"{name}:{start}", stripped))
    return out


def _takes_value(param: click.Parameter) -> bool:
    return isinstance(param, click.Option) and not param.is_flag and not param.count


def _value_is_optional(param: click.Parameter) -> bool:
    """``--resume [RUN]``: click takes the next word as the value unless there is none or it is an option."""
    return bool(getattr(param, "_flag_needs_value", False))


def _option_table(command: click.Command, ctx: click.Context) -> dict[str, click.Parameter]:
    table: dict[str, click.Parameter] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                table[name] = param
    for name in command.get_help_option_names(ctx):
        table[name] = click.Option([name], is_flag=True)
    return table


def check_command(line: str) -> list[str]:
    """What is wrong with one `vgg ...` command line: an unknown command, option or choice."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as e:
        return [f"cannot be split like a shell would: {e}"]
    for i, token in enumerate(tokens):
        if token in SHELL_STOP or token.startswith(("|", ">", "2>")):
            tokens = tokens[:i]
            break
    tokens = tokens[1:]  # "vgg"
    command: click.Command = cli
    path, ctx = ["vgg"], click.Context(cli, info_name="vgg", **cli.context_settings)
    while isinstance(command, click.Group) and tokens and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            return [f"{' '.join(path)} has no command {name!r} (it has: {', '.join(sorted(command.commands))})"]
        command, path = sub, [*path, name]
        ctx = click.Context(command, info_name=name, parent=ctx, **command.context_settings)
    if isinstance(command, click.Group) and not tokens:
        return [] if command is cli else [f"{' '.join(path)} needs a command"]
    table, problems = _option_table(command, ctx), []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            break
        if not token.startswith("-") or token == "-" or re.fullmatch(r"-\d[\d.e+-]*", token):
            continue
        if token.startswith("--"):
            name, has_value, value = token.partition("=")
            has_value = bool(has_value)
        else:
            name, value = token[:2], token[2:]
            has_value = bool(value)
        param = table.get(name)
        if param is None:
            problems.append(f"{' '.join(path)} has no option {name!r}")
            continue
        if _takes_value(param) and not has_value and _value_is_optional(param):
            if i < len(tokens) and not tokens[i].startswith("-"):
                value, i = tokens[i], i + 1
        elif _takes_value(param) and not has_value:
            if i >= len(tokens):
                problems.append(f"{' '.join(path)} {name} needs a value")
                continue
            value, i = tokens[i], i + 1
        if isinstance(param.type, click.Choice) and value and value not in param.type.choices:
            problems.append(f"{' '.join(path)} {name} {value!r}: not one of {', '.join(param.type.choices)}")
    return problems


def bad_commands(files: list[Path]) -> list[str]:
    return [f"{where}: {line!r}: {problem}" for where, line in command_lines(files) for problem in check_command(line)]


# ---------------------------------------------------------------------------------------------------- the docs


def test_there_are_docs_to_check():
    files = doc_files()
    assert len(files) > 1, "docs/*.md is empty"
    assert len(command_lines(files)) >= 20  # the parser still finds the command lines


def test_every_relative_link_and_anchor_resolves():
    assert broken_links(doc_files()) == []


def test_every_vgg_command_line_parses():
    assert bad_commands(doc_files()) == []


def test_the_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"docs/{p.name}" not in readme]
    assert missing == []


# ---------------------------------------------------------------------------------- the checkers can fail


def test_the_anchor_rule_is_githubs():
    assert github_anchor("Learning rates: `auto`") == "learning-rates-auto"
    assert github_anchor("Several GPUs, several machines, and other Keras backends") == (
        "several-gpus-several-machines-and-other-keras-backends")
    assert github_anchor("On a fresh machine: two commands") == "on-a-fresh-machine-two-commands"
    assert github_anchor("cache_dir and the -v flag") == "cache_dir-and-the--v-flag"


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: `x`\n\n## A section: `x`\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Doc\n\n"
        "[fine](other.md#a-section-x) [twice](other.md#a-section-x-1) [self](#doc) [web](https://example.com/#x)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) ![picture](missing.png)\n"
        "`[in code](missing-too.md)`\n\n```\n[in a block](missing-three.md)\n```\n",
        encoding="utf-8")
    found = broken_links([doc])
    assert len(found) == 3, found
    assert any("missing.md: no such file" in f for f in found)
    assert any("other.md#nowhere: no heading" in f for f in found)
    assert any("missing.png: no such file" in f for f in found)


@pytest.mark.parametrize("line, problem", [
    ("vgg train --no-such-option", "vgg train has no option '--no-such-option'"),
    ("vgg trian data.train_dir=x", "vgg has no command 'trian'"),
    ("vgg config shwo", "vgg config has no command 'shwo'"),
    ("vgg config", "vgg config needs a command"),
    ("vgg export --format zip", "vgg export --format 'zip': not one of"),
    ("vgg predict a.jpg --tta=rotate", "vgg predict --tta 'rotate': not one of"),
    ("vgg evaluate --top-k 3", "vgg evaluate has no option '--top-k'"),
    ("vgg summary -x", "vgg summary has no option '-x'"),
])
def test_a_bad_command_line_is_caught(line, problem):
    found = check_command(line)
    assert len(found) == 1 and found[0].startswith(problem), found


@pytest.mark.parametrize("line", [
    "vgg --help",
    "vgg --version",
    "vgg config show --config my.yaml train.epochs=30     # a comment with --not-an-option",
    "vgg config defaults > my.yaml",
    "vgg predict img1.jpg more/ --top-k 3 --format json | jq -r 'select(.probability > 0.9) | .path'",
    "vgg predict a.jpg -k3 -b 8 --tta=flip+shift",
    "vgg export --run runs/b45 --format onnx --int8 --max-accuracy-drop 0.2 --json",
    "vgg train -h",
    "vgg train --resume",
    "vgg train --resume runs/20261123-104502-photos -v",
    "vgg train --resume --json",
])
def test_a_good_command_line_passes(line):
    assert check_command(line) == []


def test_a_bad_option_in_a_copy_of_a_doc_is_caught(tmp_path):
    source = ROOT / "docs" / "export.md"
    copy = tmp_path / "export.md"
    text = source.read_text(encoding="utf-8")
    assert "vgg export --format saved_model" in text
    copy.write_text(text.replace("vgg export --format saved_model", "vgg export --format saved_model --bogus", 1),
                    encoding="utf-8")
    found = bad_commands([copy])
    assert len(found) == 1 and "has no option '--bogus'" in found[0], found
    continued = tmp_path / "continued.md"
    continued.write_text("```bash\nvgg train data.train_dir=x \\\n    --frobnicate\n```\n", encoding="utf-8")
    assert [f.split(": ")[-1] for f in bad_commands([continued])] == ["vgg train has no option '--frobnicate'"]
