"""The README is a user guide that agrees with the code: its parameter table is the node's, its pages hold no
lab-notebook leftovers, and every file a documented command needs is in the repository or made by a
documented command."""
import re
from pathlib import Path

import pytest

from ar_ros.ros.params import PARAMS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def shown(default) -> str:
    """A default as the README's table writes it."""
    if default is None:
        return "(unset)"
    if isinstance(default, bool):
        return str(default).lower()
    return '""' if default == "" else str(default)


def test_the_readme_is_a_guide_of_about_350_lines():
    assert len(README.read_text().splitlines()) <= 360


def test_the_parameter_table_has_every_parameter_with_its_default_and_no_other():
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| (yes|no) \|", README.read_text(), re.M)
    table = {name: (default, live) for name, default, live in rows}
    assert list(table) == [p.name for p in PARAMS]
    for p in PARAMS:
        assert table[p.name] == (shown(p.default), "no" if p.read_only else "yes"), p.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_times_of_day_or_internal_issue_numbers(page):
    text = page.read_text()
    assert not re.findall(r"\bissue \d+", text, re.I)
    assert not re.findall(r"\b[012]?\d:[0-5]\d\b(?!\d)", re.sub(r"```.*?```", "", text, flags=re.S))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_files_under_runs_that_commands_read_are_made_by_a_command_on_the_same_page(page):
    """runs/ is not in the repository: a page that reads runs/X.pt must say how to make it."""
    text = page.read_text()
    made = set(re.findall(r"(?:> |--out |--fit )(runs/[\w./-]+)", text))  # a file, or a run folder (--out)
    for used in set(re.findall(r"runs/[\w./-]+\.pt\b", text)):
        assert used in made or any(used.startswith(m.rstrip("/") + "/") for m in made), \
            f"{page.name}: {used} is used but no command on the page writes it"
