"""One table from all the others: for each family of docs/benchmarks.md (whose tables the
scripts of benchmarks/ print with --markdown), how many measured rows have a target, how many
meet it, and the range of the measured ratios. README.md holds this script's output (written
by benchmarks/publish.py), and tests/test_readme.py checks that it still matches the tables.

    python benchmarks/summary.py [docs/benchmarks.md]

A ratio is a speedup (``>= t`` or ``> t``: higher is better) or a cost (``<= t`` or ``< t``:
lower is better); a cell holding a range ("1.91-3.25x") counts at its worse end, one holding
"before / after" at "after".
"""

from __future__ import annotations

import re
import sys
from fractions import Fraction
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
NUMBER = r"(\d+(?:\.\d+)?(?:/\d+)?)"


def table_cells(line: str) -> list[str]:
    """The stripped cells of one Markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _ratios(cell: str) -> list[float]:
    cell = cell.split("/")[-1] if " / " in cell else cell  # before / after: after
    return [float(v) for v in re.findall(r"(\d+(?:\.\d+)?)(?=x|\s*[–-]\s*\d)", cell)]


def _rows(markdown: str):
    """(family, ratio, target, higher_is_better, met) for every measured cell with a target."""
    family, lines = None, markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### "):
            family = line[4:].strip()
        if not (line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|--")):
            continue
        if i > 0 and lines[i - 1].startswith("|"):
            continue
        header = [h.lower() for h in table_cells(line)]
        if "target" not in header or family is None:
            continue
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = dict(zip(header, table_cells(row), strict=False))
            bound = re.search(r"(>=|<=|>|<)\s*" + NUMBER, cells["target"])
            if not bound:
                continue
            higher, strict = bound.group(1).startswith(">"), "=" not in bound.group(1)
            target = float(Fraction(bound.group(2)))
            if "met" in cells:  # the script says
                values = _ratios(cells.get("cost", cells.get("max", "")) + "x")
                yield family, values[0] if values else None, target, higher, cells["met"] == "yes"
                continue
            columns = ["speedup"] if "speedup" in cells else header[header.index("target") + 1 :]
            for column in columns:
                values = _ratios(cells.get(column, ""))
                if not values:
                    continue
                worst = min(values) if higher else max(values)
                met = (
                    (worst > target if strict else worst >= target)
                    if higher
                    else (worst < target if strict else worst <= target)
                )
                yield family, worst, target, higher, met


def summary(markdown: str) -> str:
    families: dict[str, list] = {}
    for family, ratio, _, higher, met in _rows(markdown):
        families.setdefault(family, []).append((ratio, higher, met))
    lines = [
        "| family | rows with a target | met | speedups (x baseline) |",
        "|---|---|---|---|",
    ]
    for family, rows in families.items():
        speedups = [r for r, higher, _ in rows if higher and r is not None]
        span = f"{min(speedups):.2f}x to {max(speedups):.2f}x" if speedups else "(costs)"
        met = sum(m for _, _, m in rows)
        lines.append(f"| {family} | {len(rows)} | {met} | {span} |")
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS
    print(summary(path.read_text()))
