"""The documentation holds together: the site builds with ``mkdocs build --strict`` (a broken
link, a missing page or an API page whose module is gone fails it), every page is in the
site's navigation, every public module has an API page, the command synopsis names every
option, the README stays short enough to read to the end, and CI runs the README's command."""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import yaml

import noisynets

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def nav_pages(entries) -> list[str]:
    """Every page named in mkdocs.yml's ``nav``, in order."""
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def public_modules() -> list[str]:
    return ["noisynets"] + [m.name for m in pkgutil.walk_packages(noisynets.__path__,
                                                                  "noisynets.")
                            if not any(part.startswith("_") for part in m.name.split("."))]


def test_the_site_builds_with_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The API reference lists every public function and class of every public module.
    missing = []
    for name in public_modules():
        module = importlib.import_module(name)
        page = (tmp_path / "site" / "api" / name / "index.html").read_text()
        missing += [f"{name}.{attr}" for attr, obj in vars(module).items()
                    if not attr.startswith("_") and inspect.isfunction(obj) | inspect.isclass(obj)
                    and obj.__module__ == name and f'id="{name}.{attr}"' not in page]
    assert not missing, missing


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page():
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages, (set(pages) - set(nav), set(nav) - set(pages))
    assert len(nav) == len(set(nav))


def test_every_public_module_has_an_api_page_in_the_navigation():
    """A module added or moved (into noisynets/core/, say) needs docs/api/<module>.md holding
    ``::: <module>`` and a line ``- api/<module>.md`` under "API reference" in mkdocs.yml; a
    page of a module that is gone must go."""
    modules = public_modules()
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    missing = [m for m in modules if f"api/{m}.md" not in nav
               or f"::: {m}\n" not in (DOCS / "api" / f"{m}.md").read_text()
               if (DOCS / "api" / f"{m}.md").exists()]
    missing += [m for m in modules if not (DOCS / "api" / f"{m}.md").exists()]
    assert not missing, f"add docs/api/<module>.md ('::: <module>') and its nav line: {missing}"
    stale = sorted({p.stem for p in (DOCS / "api").glob("*.md")} - set(modules))
    assert not stale, f"API pages of modules that do not exist: {stale}"


def test_the_command_synopsis_names_every_option_of_every_command():
    """docs/cli.md's synopsis block against the parser: an option a command takes and the
    synopsis leaves out (as `export ... --trust-model` once was) fails here."""
    from noisynets.cli import make_parser

    text = (DOCS / "cli.md").read_text()
    synopsis = text[text.index("```\nnoisynets train"):]
    synopsis = synopsis[:synopsis.index("\n```", 4)]
    lines: dict[str, str] = {}
    for line in re.split(r"\n(?=noisynets )", synopsis.removeprefix("```\n")):
        command = line.split()[1]
        lines[command] = lines.get(command, "") + " " + line
    commands = next(a for a in make_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    def named(option: str, line: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", line) is not None

    missing = [(name, action.option_strings) for name, parser in commands.items()
               for action in parser._actions
               if action.option_strings and "--help" not in action.option_strings
               and not any(named(o, lines.get(name, "")) for o in action.option_strings)]
    assert not missing, missing


def test_the_readme_is_short_enough_to_read_to_the_end():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start"):]
    start = quick.index("```bash\n")
    block = quick[start:quick.index("\n```", start + 8)]
    assert "make train" in block and "make test" in block
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_documentation_tools_come_with_dev():
    """`make test` installs the dev extra and builds the site: dev must bring the docs extra."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(extras["docs"]) <= set(extras["dev"])
