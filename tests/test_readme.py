"""README.md for a newcomer: short, its pick table covers every public function, its
benchmark summary is what benchmarks/summary.py prints from the docs' tables, and its
citation names the package's version."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import jaxrelax
from jaxrelax import diagnostics, schedules

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_is_short():
    assert len(README.splitlines()) < 250


def test_the_pick_table_names_every_public_function():
    table = README[README.index("## Which one do I pick?") : README.index("## Quick example")]
    named = set(re.findall(r"`(?:schedules\.|diagnostics\.)?(\w+)`", table))
    public = {n for n in jaxrelax.__all__ if inspect.isfunction(getattr(jaxrelax, n))}
    public |= set(schedules.__all__)
    public |= {n for n in diagnostics.__all__ if inspect.isfunction(getattr(diagnostics, n))}
    public -= {"gradient_stats", "one_hot_configurations", "exact_expectation"}  # helpers
    assert public <= named, sorted(public - named)


def test_the_benchmark_summary_is_the_scripts():
    block = re.search(r"<!-- summary: .*? -->\n(.*?)\n<!-- end of summary -->", README, re.S)
    printed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "summary.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert block and block.group(1).strip() == printed


def test_the_citation_names_this_version():
    assert f"version = {{{jaxrelax.__version__}}}" in README
