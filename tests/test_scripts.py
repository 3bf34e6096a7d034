"""The notebooks and benchmark scripts run, at a small size, and print what they claim."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(path.name for path in (ROOT / "notebooks").glob("*.py"))


def _run(*args, env=None):
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_quickstart_notebook_learns():
    out = _run("notebooks/00_quickstart.py", env={"JAXRELAX_SMOKE": "1"})
    random_regret = float(re.search(r"regret of a random choice: ([\d.]+)", out).group(1))
    final_regret = float(out.strip().splitlines()[-2].split()[-1])
    assert final_regret < 0.2 * random_regret, out
    cosine = float(re.search(r"true cost weights: ([-\d.]+)", out).group(1))
    assert cosine > 0.9, out


@pytest.mark.slow
def test_core_benchmark_prints_its_table():
    out = _run("benchmarks/core.py", "--quick")
    for op in [
        "hardmax",
        "softmax",
        "smooth_max",
        "st_hardmax",
        "soft_argmax",
        "st_argmax",
        "st_max",
    ]:
        assert re.search(rf"^{op}\s", out, re.M), op
    assert re.search(r"^st_hardmax\s+64x128\s+float32\s+fwd\+bwd\s.*\s1 vs 1\s*$", out, re.M), out


@pytest.mark.slow
def test_stochastic_benchmark_prints_its_table():
    out = _run("benchmarks/stochastic.py", "--quick")
    for op in ["gumbel_softmax", "gumbel_softmax hard", "gumbel_rao K=10"]:
        assert re.search(rf"^{op}\s+64x128\s", out, re.M), op


@pytest.mark.slow
def test_sparse_benchmark_prints_its_table():
    out = _run("benchmarks/sparse.py", "--quick")
    for op, baseline in [
        ("sparsemax", "sort"),
        ("sparsemax", "nn.softmax"),
        ("entmax15", "sort"),
        ("entmax a=1.3", "nn.softmax"),
    ]:
        assert re.search(
            rf"^{op}\s+64x128\s+float32\s+fwd\+bwd\s.*{baseline}.*1 vs 1\s*$", out, re.M
        ), (
            op,
            out,
        )


@pytest.mark.slow
@pytest.mark.parametrize("script", [n for n in NOTEBOOKS if n != "00_quickstart.py"])
def test_notebook_runs_at_smoke_size_and_writes_its_figures(script, tmp_path):
    out = _run(
        f"notebooks/{script}", env={"JAXRELAX_SMOKE": "1", "JAXRELAX_FIGURES": str(tmp_path)}
    )
    assert f"figures written to {tmp_path}" in out, out
    figures = list(tmp_path.glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures), figures


@pytest.mark.parametrize("script", NOTEBOOKS)
def test_paired_notebook_is_in_sync_and_executed(script):
    source = jupytext.read(ROOT / "notebooks" / script)
    paired = jupytext.read(ROOT / "notebooks" / script.replace(".py", ".ipynb"))

    def cells(notebook):
        return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]

    assert cells(paired) == cells(source), f"run: jupytext --sync notebooks/{script}"
    code = [cell for cell in paired.cells if cell.cell_type == "code"]
    assert all(cell.get("outputs") is not None for cell in code)
    assert any(cell.outputs for cell in code), "the paired notebook has no outputs"
