"""The release step for the benchmark tables: run every script that docs/benchmarks.md names in
a generated block, write the tables it prints into that block, and write the summary of
benchmarks/summary.py into README.md. No table in either file is typed by hand.

    python benchmarks/publish.py [--runs N] [--only SCRIPT ...]    # from any directory

A generated block reads

    <!-- generated: python benchmarks/core.py --markdown -->
    ...
    <!-- end of generated block -->

With several runs (3 by default) each ratio cell becomes the range of the runs' ratios
("0.91–1.02x", which summary.py counts at its worse end), each other number the runs'
median, and a "met" cell "yes" only if every run met its target. Run it on a quiet machine:
nothing else should run beside it.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from summary import summary, table_cells

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(<!-- generated: (?P<command>python benchmarks/[^>]*?) -->\n)(?P<body>.*?)"
    r"(<!-- end of generated block -->)",
    re.S,
)
SUMMARY = re.compile(
    r"(<!-- summary: python benchmarks/summary.py -->\n)(.*?)(<!-- end of summary -->)", re.S
)
RATIO = re.compile(r"^(\d+(?:\.(\d+))?)x$")
NUMBER = re.compile(r"^-?\d+(?:\.(\d+))?$")


def printed_tables(stdout: str) -> list[str]:
    """A script's output less its progress lines (the indented ones)."""
    return [line for line in stdout.splitlines() if not line.startswith("  ")]


def _merge_cell(values: tuple[str, ...]) -> str:
    if len(set(values)) == 1:
        return values[0]
    if all(RATIO.match(v) for v in values):
        ratios = [float(v[:-1]) for v in values]
        decimals = len(RATIO.match(values[0]).group(2) or "")
        return f"{min(ratios):.{decimals}f}–{max(ratios):.{decimals}f}x"
    if all(NUMBER.match(v) for v in values):
        decimals = len(NUMBER.match(values[0]).group(1) or "")
        return f"{statistics.median(float(v) for v in values):.{decimals}f}"
    if set(values) <= {"yes", "no"}:
        return "no" if "no" in values else "yes"
    return values[-1]


def merge(outputs: list[str]) -> list[str]:
    """One set of tables from several runs of the same script (see the module docstring)."""
    runs = [printed_tables(output) for output in outputs]
    if len({len(lines) for lines in runs}) != 1:
        raise ValueError("the runs printed tables of different shapes")
    merged = []
    for lines in zip(*runs, strict=True):
        is_row = lines[0].startswith("|") and not set(lines[0]) <= set("|-: ")
        if is_row and len({len(table_cells(line)) for line in lines}) == 1:
            cells = zip(*(table_cells(line) for line in lines), strict=True)
            merged.append("| " + " | ".join(_merge_cell(c) for c in cells) + " |")
        else:
            merged.append(lines[-1])
    while merged and not merged[0].strip():
        merged.pop(0)
    while merged and not merged[-1].strip():
        merged.pop()
    return merged


def run_script(command: str) -> str:
    """The standard output of one run of ``command`` (``python benchmarks/...``)."""
    args = shlex.split(command)
    result = subprocess.run(
        [sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"{command} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def measure(commands: list[str], runs: int, run: Callable[[str], str] = run_script) -> dict:
    """The block body of each command: a line saying how it was measured, then its tables."""
    bodies = {}
    for command in commands:
        outputs = []
        for i in range(runs):
            print(f"{command} ({i + 1}/{runs})", flush=True)
            outputs.append(run(command))
        how = f"{runs} runs (ratios: lowest–highest; times: medians)" if runs > 1 else "one run"
        note = f"Measured {datetime.date.today()} by `{command}`, {how}:"
        bodies[command] = note + "\n\n" + "\n".join(merge(outputs)) + "\n"
    return bodies


def commands(docs: str, only: list[str]) -> list[str]:
    """The commands of the generated blocks of ``docs`` (those naming a script in ``only``)."""
    found = [block["command"] for block in BLOCK.finditer(docs)]
    return [c for c in found if not only or any(name in c for name in only)]


def rewrite(docs: str, bodies: dict) -> str:
    """``docs`` with the blocks of the commands in ``bodies`` holding those bodies."""
    return BLOCK.sub(
        lambda b: b[1] + bodies[b["command"]] + b[4] if b["command"] in bodies else b[0], docs
    )


def with_summary(readme: str, docs: str) -> str:
    """``readme`` with its summary block rewritten from ``docs``."""
    return SUMMARY.sub(lambda m: m[1] + summary(docs) + "\n" + m[3], readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each script")
    parser.add_argument("--only", nargs="*", default=[], help="scripts to run, e.g. core.py")
    args = parser.parse_args()
    for command in commands(DOCS.read_text(), args.only):
        bodies = measure([command], args.runs)
        docs = rewrite(DOCS.read_text(), bodies)  # read again: the prose may have changed
        DOCS.write_text(docs)
        README.write_text(with_summary(README.read_text(), docs))
    print(f"wrote {DOCS.relative_to(ROOT)} and the summary in {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
