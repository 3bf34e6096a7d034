"""The benchmark tables of docs/benchmarks.md are the scripts' output, written by the release
step benchmarks/publish.py: every table lies in a generated block naming the script that
printed it, and publishing merges the runs as documented."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import publish  # noqa: E402

DOCS = (ROOT / "docs" / "benchmarks.md").read_text()


def test_every_table_lies_in_a_generated_block_of_an_existing_script():
    blocks = list(publish.BLOCK.finditer(DOCS))
    assert len(blocks) >= 9
    for block in blocks:
        script = block["command"].split()[1]
        assert (ROOT / script).is_file(), script
        assert block["body"].startswith("Measured "), block["command"]
    outside = publish.BLOCK.sub("", DOCS)
    typed = [line for line in outside.splitlines() if line.startswith("|")]
    assert not typed, typed[:3]


RUN_1 = """jax 0.10.2, backend cpu (cpu), 2 CPU cores
  measured softmax fwd (4, 8)

| op | shape | ms | baseline ms | speedup | target |
|---|---|---|---|---|---|
| softmax | 4x8 | 1.00 | 2.00 | 2.00x | >=1.5x |
| hardmax | 4x8 | 3.0 | 3.0 | 1.00x | >=1.2x |
"""
RUN_2 = RUN_1.replace("| 1.00 | 2.00 | 2.00x |", "| 3.00 | 3.00 | 1.00x |")
RUN_3 = RUN_1.replace("| 1.00 | 2.00 | 2.00x |", "| 2.00 | 2.50 | 1.25x |")


def test_merging_runs_gives_ratio_ranges_and_median_times():
    merged = publish.merge([RUN_1, RUN_2, RUN_3])
    assert merged[0] == "jax 0.10.2, backend cpu (cpu), 2 CPU cores"
    assert "| softmax | 4x8 | 2.00 | 2.50 | 1.00–2.00x | >=1.5x |" in merged
    assert "| hardmax | 4x8 | 3.0 | 3.0 | 1.00x | >=1.2x |" in merged
    assert not any("measured" in line for line in merged)
    assert publish.merge([RUN_1]) == publish.printed_tables(RUN_1)


def test_a_target_is_met_over_runs_only_if_every_run_met_it():
    assert publish._merge_cell(("yes", "yes", "yes")) == "yes"
    assert publish._merge_cell(("yes", "no", "yes")) == "no"


def test_publishing_rewrites_only_the_chosen_blocks_and_the_summary_follows():
    docs = (
        "### Family A\n\n<!-- generated: python benchmarks/a.py --markdown -->\nold\n"
        "<!-- end of generated block -->\n\n### Family B\n\n"
        "<!-- generated: python benchmarks/b.py -->\nkept\n<!-- end of generated block -->\n"
    )
    calls = []

    def fake_run(command):
        calls.append(command)
        return RUN_1

    bodies = publish.measure(publish.commands(docs, ["a.py"]), runs=2, run=fake_run)
    out = publish.rewrite(docs, bodies)
    assert calls == ["python benchmarks/a.py --markdown"] * 2
    assert "old" not in out and "\nkept\n" in out
    assert re.search(
        r"Measured \d{4}-\d\d-\d\d by `python benchmarks/a.py --markdown`, 2 runs", out
    )
    readme = "x\n<!-- summary: python benchmarks/summary.py -->\nstale\n<!-- end of summary -->\n"
    summary = publish.with_summary(readme, out)
    assert "stale" not in summary and "| Family A | 2 | 1 | 1.00x to 2.00x |" in summary
