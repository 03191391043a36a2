"""The documentation against the product: every command and option of ``backtest`` has its entry in
docs/cli.md, every relative link resolves, and the README stays a front page with its two commands first."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main

from cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: the README's two commands for a fresh machine, in this order, as its first two code blocks
README_COMMANDS = ("pip install -e . && backtest demo", 'pip install -e ".[test]" && python -m pytest')

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!\\)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command of the CLI with its path, the groups themselves included, depth first. Duck-typed:
    Typer builds its commands on a click of its own (``typer._click``), not on the installed one."""
    found = [(path, group)] if path else []
    for name, sub in sorted(getattr(group, "commands", {}).items()):
        if not sub.hidden:
            found += commands(sub, (*path, name))
    return found


def long_options(command: Any) -> list[str]:
    names = []
    for param in command.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            names += [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--") and o != "--help"]
    return names


def markdown_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """Each line of a markdown text with its number and whether it lies inside a fenced code block (the
    fences themselves count as inside): headings and links are only read outside."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        fence = bool(FENCE.match(line.strip()))
        fenced ^= fence
        yield number, line, fenced or fence


def outside_code(text: str) -> list[tuple[int, str]]:
    return [(number, line) for number, line, code in markdown_lines(text) if not code]


@cache
def cli_sections() -> dict[str, str]:
    """docs/cli.md cut at its ``backtest ...`` headings: each command's text up to the next command heading
    (a group's section ends where its first sub-command's begins)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for _, line, code in markdown_lines((DOCS / "cli.md").read_text()):
        heading = None if code else HEADING.match(line)
        title = heading.group(2).strip("` ") if heading else ""
        if title.startswith("backtest"):
            current = sections.setdefault(title, [])
        else:
            current.append(line)
    return {title: "\n".join(lines) for title, lines in sections.items()}


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its visible text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    return frozenset(
        slug(m.group(2)) for _, line in outside_code(path.read_text()) if (m := HEADING.match(line))
    )


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]


CLI = typer.main.get_command(app)
COMMANDS = commands(CLI)


def test_the_cli_walk_finds_the_commands():
    # a walk that found nothing would let every check below pass
    paths = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "demo", "ingest", "bench", "db", "server"} <= paths
    assert any(len(path) == 2 for path, _ in COMMANDS), "no sub-command found"
    assert "--chunk-size" in long_options(CLI.commands["run"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_and_option_is_in_the_cli_manual(path, command):
    sections = cli_sections()
    title = "backtest " + " ".join(path)
    assert title in sections, f"docs/cli.md has no heading '{title}'"
    missing = [
        o
        for o in long_options(command)
        if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", sections[title])
    ]
    assert not missing, f"docs/cli.md's section '{title}' does not describe {missing}"


def test_the_cli_manual_describes_no_command_that_does_not_exist():
    titles = set(cli_sections())
    assert titles - {"backtest"} - {"backtest " + " ".join(p) for p, _ in COMMANDS} == set()


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for number, line in outside_code(page.read_text()):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (page.parent / file).resolve() if file else page
            if not resolved.exists():
                broken.append(f"line {number}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"line {number}: {target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_front_page_with_its_two_commands_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200, "README.md is the front page: the manual goes in docs/"
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    assert tuple(b.strip() for b in blocks[:2]) == README_COMMANDS
    for page in ("design.md", "cli.md", "benchmarks.md"):
        assert f"docs/{page}" in text, f"README.md does not link docs/{page}"


def test_design_references_point_into_the_repository():
    name = "DESIGN" + ".md"  # spelled so, this file does not mention it
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    offenders = [
        f"{path}:{number}"
        for path in listed.stdout.splitlines()
        if (ROOT / path).is_file() and path.endswith((".py", ".md", ".yaml", ".toml", ".cfg", ".txt"))
        for number, line in enumerate((ROOT / path).read_text(errors="replace").splitlines(), 1)
        if name in line
    ]
    assert not offenders, f"{name} is not in the repository (docs/design.md is): {offenders}"
