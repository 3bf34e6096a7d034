"""The notebooks and benchmark scripts run, at a small size, and print what they claim."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

import jaxrelax

ROOT = Path(__file__).resolve().parents[1]
# The numbered notebooks; notebooks/real_data.py is their data loader (tests/test_real_data.py).
NOTEBOOKS = sorted(path.name for path in (ROOT / "notebooks").glob("[0-9]*.py"))


def _run(*args, env=None):
    # The environment of the tests: XLA's backend optimisations are off (conftest.py), which
    # takes a third less time at these sizes, the notebooks' training included.
    environment = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env=environment,
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
def test_threshold_benchmark_prints_its_tables():
    out = _run("benchmarks/threshold.py", "--quick")
    for name in ["sparsemax", "entmax15", "soft_topk", "sparse_topk", "entmax alpha=1.3"]:
        counts = re.search(rf"^{name}\s+((?:\d+\s+){{8}})<=8", out, re.M)
        assert counts, (name, out)
        assert all(int(c) >= 1 for c in counts.group(1).split()), out
    # the one-outlier rows: the outlier takes the whole mass, which the first step finds
    assert re.search(r"^sparsemax\s+(?:\d+\s+){4}1\s", out, re.M), out
    for op, mode in [("sparsemax", "fwd"), ("soft_topk", "fwd+bwd"), ("topk_mask", "fwd")]:
        assert re.search(rf"^{op}\s.*64x256\s+normal\s+{re.escape(mode)}\s.*x\s+<=", out, re.M), op


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
# (00, 05 and 06 have tests of their own, which read what they print and check their figures.)
@pytest.mark.parametrize(
    "script",
    [
        n
        for n in NOTEBOOKS
        if n not in ("00_quickstart.py", "05_topk.py", "06_reversing_max.py", "07_ranking.py")
    ],
)
def test_notebook_runs_at_smoke_size_and_writes_its_figures(script, tmp_path):
    out = _run(
        f"notebooks/{script}", env={"JAXRELAX_SMOKE": "1", "JAXRELAX_FIGURES": str(tmp_path)}
    )
    assert f"figures written to {tmp_path}" in out, out
    if script.startswith("02_"):  # the demo evaluates in chunks, checked against at once
        assert "evaluation in chunks of 25 vs at once: largest difference" in out, out
    figures = list(tmp_path.glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures), figures


@pytest.mark.parametrize("script", NOTEBOOKS)
def test_executed_notebook_is_of_this_version(script):
    """The release step (notebooks/execute.py) executed the published notebook with this
    package: the version it printed is the package's."""
    notebook = jupytext.read(ROOT / "notebooks" / script.replace(".py", ".ipynb"))
    printed = [
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    ]
    found = re.findall(r"^jaxrelax (\S+) on jax", "".join(printed), re.M)
    assert found == [jaxrelax.__version__], (found, "run: python notebooks/execute.py " + script)


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


@pytest.mark.slow
def test_topk_notebook_learns_to_select_patches(tmp_path):
    out = _run(
        "notebooks/05_topk.py", env={"JAXRELAX_SMOKE": "1", "JAXRELAX_FIGURES": str(tmp_path)}
    )
    header = re.search(r"^estimator((?:\s+k=\d+)+)\s+distinct subsets", out, re.M)
    assert header, out
    ks = [int(k) for k in re.findall(r"k=(\d+)", header.group(1))]
    assert len(ks) >= 2 and ks == sorted(ks), out
    rows = {}
    for name in ["st_topk", "soft_topk", "sparse_topk", "gumbel_topk hard", "random patches"]:
        row = re.search(rf"^{name}((?:\s+[\d.]+){{{len(ks)}}})\s+(\d+)\s+[\d.]+$", out, re.M)
        assert row, (name, out)
        accuracy = [float(a) for a in row.group(1).split()]
        rows[name] = dict(accuracy=accuracy, subsets=int(row.group(2)))
    random = rows.pop("random patches")
    # Chance is 0.1. At the largest k every selector is well above it, and the best one
    # clearly so; at the smallest k the best learned selection beats k random patches.
    for name, row in rows.items():
        assert row["accuracy"][-1] > 0.3, (name, ks, out)
        assert row["subsets"] > 1, (name, "the same patches for every image", out)
    assert max(row["accuracy"][-1] for row in rows.values()) > 0.5, out
    assert max(row["accuracy"][0] for row in rows.values()) > random["accuracy"][0] + 0.1, out
    best = re.search(rf"^best estimator at k={ks[-1]}: (.+) \(([\d.]+)\)$", out, re.M)
    assert best and float(best.group(2)) == max(r["accuracy"][-1] for r in rows.values()), out
    # Judged by the classifier trained on random patches (EVAL-X), the learned selections
    # still beat the random ones at the smallest k: they show the class, not only encode it.
    judged = out.split("(EVAL-X):")[1]
    for name, row in rows.items():
        values = re.search(rf"^{name}((?:\s+[\d.]+){{{len(ks)}}})$", judged, re.M)
        assert values, (name, out)
        row["judged"] = [float(a) for a in values.group(1).split()]
    assert max(row["judged"][0] for row in rows.values()) > random["accuracy"][0] + 0.05, out
    assert f"figures written to {tmp_path}" in out, out
    assert len(list(tmp_path.glob("*.png"))) == 3, out


def _numbers_after(out, header):
    """The rows of numbers that follow the line matching ``header``: {first: the others}."""
    table = {}
    for line in out[re.search(header, out, re.M).end() :].strip("\n").splitlines():
        try:
            first, *others = (float(field) for field in line.split())
        except ValueError:
            break
        table[first] = others
    return table


@pytest.mark.slow
def test_reversing_max_notebook_unpools_better_than_it_repeats(tmp_path):
    out = _run(
        "notebooks/06_reversing_max.py",
        env={"JAXRELAX_SMOKE": "1", "JAXRELAX_FIGURES": str(tmp_path)},
    )
    assert re.search(r"^data: (Fashion-MNIST|scikit-learn 8x8 digits): ", out, re.M), out
    # 1. As t falls, the window softmax tends to the winner's one-hot, and the soft
    # unpooling to max_unpool's (ties keep it from reaching it).
    soft = _numbers_after(out, r"^\s+t\s+\|soft_pool - max_pool\|.*MSE to the image$")
    temperatures = list(soft)
    assert len(temperatures) >= 4 and temperatures == sorted(temperatures, reverse=True), out
    to_one_hot = [row[2] for row in soft.values()]
    to_max_unpool = [row[3] for row in soft.values()]
    assert to_one_hot == sorted(to_one_hot, reverse=True) and to_one_hot[-1] < 0.01, out
    assert to_one_hot[0] > 0.5, out
    assert to_max_unpool == sorted(to_max_unpool, reverse=True), out
    assert to_max_unpool[-1] < 0.5 * to_max_unpool[0], out
    # 2. The table: test MSE and seconds per variant, the test MSE of two references.
    assert re.search(r"^variant\s+encoder\s+decoder\s+test MSE\s+seconds$", out, re.M), out
    variants = ["max_unpool", "repeat", "st_max_pool + repeat"]
    mse = {}
    for name in [*variants, "mean training image", "all zeros"]:
        columns = r"\S+\s+\S+\s+([\d.]+)\s+[\d.]+" if name in variants else r"-\s+-\s+([\d.]+)\s+-"
        row = re.search(rf"^{re.escape(name)}\s+{columns}$", out, re.M)
        assert row, (name, out)
        mse[name] = float(row.group(1))
    assert 0 < mse["mean training image"] < mse["all zeros"], out
    for name in variants:  # every autoencoder beats the mean image, by far with the indices
        assert 0 < mse[name] < mse["mean training image"], (name, out)
    assert mse["max_unpool"] < 0.5 * mse["mean training image"], out
    # Unpooling at the recorded positions beats repetition, whichever gradient the encoder
    # had (at smoke size by about 20% on Fashion-MNIST, 50% on the digits).
    assert mse["max_unpool"] < 0.9 * min(mse["repeat"], mse["st_max_pool + repeat"]), out
    assert re.search(r"^best variant: max_unpool \(", out, re.M), out
    # 3. Gumbel samples hit the winner as often as the softmax says, ever more often as the
    # scale of the logits falls.
    stochastic = _numbers_after(out, r"^\s+scale s\s+P\(hit\) sampled.*MSE to the image$")
    scales = list(stochastic)
    assert len(scales) >= 3 and scales == sorted(scales, reverse=True), out
    hits = [row[0] for row in stochastic.values()]
    for sampled, softmax, z, *_ in stochastic.values():
        assert abs(sampled - softmax) < 0.03 and z < 6, out
    assert hits == sorted(hits) and hits[-1] > 0.95, out
    assert f"figures written to {tmp_path}" in out, out
    figures = sorted(f.name for f in tmp_path.glob("*.png"))
    assert figures == [
        "gumbel_unpooling.png",
        "reconstructions.png",
        "soft_unpooling.png",
        "training_loss.png",
    ], figures
    assert all(f.stat().st_size > 1000 for f in tmp_path.glob("*.png")), out


@pytest.mark.slow
def test_topk_benchmark_checks_its_baselines_and_prints_its_table():
    out = _run("benchmarks/topk.py", "--quick")
    assert "baselines agree with ours at 64x128: values and VJPs to 1e-4" in out, out
    for op, mode, baseline in [
        ("topk_mask k=1", "fwd", "top_k k-hot"),
        ("topk_mask k=64", "fwd", "top_k k-hot"),
        ("topk_mask k=n/4", "fwd", "top_k k-hot"),
        ("soft_topk k=8", "fwd+bwd", "nn.softmax"),
        ("soft_topk k=n/4", "fwd+bwd", "sort+bisect LML"),
        ("sparse_topk k=8", "fwd", "nn.softmax"),
        ("sparse_topk k=n/4", "fwd+bwd", "sort capped simplex"),
        ("st_topk k=8", "fwd+bwd", "soft_topk"),
        ("gumbel_topk hard k=n/4", "fwd", "gumbel + top_k k-hot"),
        ("gumbel_topk hard k=n/4", "fwd+bwd", "recipe + st soft_topk"),
    ]:
        assert re.search(
            rf"^{re.escape(op)}\s+64x128\s+float32\s+{re.escape(mode)}\s+[\d.]+\s+"
            rf"{re.escape(baseline)}\s",
            out,
            re.M,
        ), (op, mode, out)
    # Every relaxation keeps one input-sized array for its backward pass, as its baselines do.
    residuals = r"^soft_topk k=8\s+64x128\s+float32\s+fwd\+bwd\s.*\s1 vs 1\s*$"
    assert re.search(residuals, out, re.M), out


@pytest.mark.slow
def test_pooling_benchmark_checks_its_baselines_and_prints_its_table():
    out = _run("benchmarks/pooling.py", "--quick", "--repeats", "2")
    assert re.search(r"^baselines(?: and torch)? agree with ours at 4x16x15x8", out, re.M), out
    for op, mode, baseline in [
        ("max_pool 2x2/2", "fwd", "reduce_window max"),
        ("max_pool 3x3/2 p1", "fwd+bwd", "reduce_window max"),
        ("max_pool indices 3x3/2 p1", "fwd", "reduce_window max"),
        ("max_unpool 2x2/2", "fwd", "vjp(reduce_window) unpool"),
        ("soft_pool 3x3/2 p1", "fwd+bwd", "avg_pool"),
        ("lse_pool 2x2/2", "fwd+bwd", "direct lse_pool"),
        ("st_max_pool 3x3/2 p1", "fwd+bwd", "soft_pool"),
    ]:
        assert re.search(
            rf"^{re.escape(op)}\s+8x32x32x16\s+float32\s+{re.escape(mode)}\s+[\d.]+\s+"
            rf"{re.escape(baseline)}\s",
            out,
            re.M,
        ), (op, mode, out)
    # max_pool's backward pass keeps the winners' offsets, not the input.
    assert re.search(
        r"^max_pool 2x2/2\s+8x32x32x16\s+float32\s+fwd\+bwd\s.*\s0 vs 1\s*$", out, re.M
    )


@pytest.mark.slow
def test_perturbed_benchmark_checks_optax_and_prints_its_tables():
    out = _run("benchmarks/perturbed.py", "--quick", "--repeats", "2")
    assert "checked: optax fed our noise gives our values and gradients" in out, out
    for op, mode, baseline in [
        ("perturbed_argmax M=4", "fwd+bwd", "noise draw"),
        ("perturbed_argmax M=4", "fwd+bwd", "optax"),
        ("perturbed_argmax M=4", "fwd+bwd", "optax, one key"),
        ("perturbed, vmapped M=4", "fwd+bwd", "optax"),
    ]:
        assert re.search(
            rf"^{re.escape(op)}\s+8x64\s+float32\s+{re.escape(mode)}\s+[\d.]+\s+"
            rf"{re.escape(baseline)}\s",
            out,
            re.M,
        ), (op, mode, out)
    assert re.search(r"^8x64\s+4\s+[\d.]+\s+[\d.]+\s+[\d.]+\s*$", out, re.M), out


@pytest.mark.slow
def test_tricks_benchmark_checks_each_trick_against_its_plain_form():
    out = _run("benchmarks/tricks.py", "--quick")
    # Every trick the library keeps has a row (and its comment points there); the script
    # stops before its table if a plain form disagrees with the trick.
    for trick, where in [
        ("halving shift", "_numerics.shift_by_max"),
        ("arithmetic is-the-max", "_numerics.below_max"),
        ("float position keys", "_hard.first_max_position"),
        ("keys + is-the-max + poison", "_hard.hardmax_impl"),
        ("counting above SMALL_K", "_topk.topk_mask_impl"),
        ("window slices", "_pool._window_max"),
        ("slices + spreads", "_pool._max_pool_bwd"),
        ("unrolled threefry", "_noise.uniform"),
        ("24-bit exponentials", "_gumbel._exponentials"),
        ("sum by tensordot", "_perturbation.sum_leading"),
    ]:
        row = rf"^\d+\s+{re.escape(trick)}\s+{re.escape(where)}\s.*\s[\d.]+x\s+(keep|plain)\s*$"
        assert re.search(row, out, re.M), (trick, out)
    assert re.search(r"^verdicts \(keep: tuned at least 1\.10x faster than plain\):$", out, re.M)


@pytest.mark.slow
def test_ranking_notebook_learns(tmp_path):
    out = _run(
        "notebooks/07_ranking.py", env={"JAXRELAX_SMOKE": "1", "JAXRELAX_FIGURES": str(tmp_path)}
    )
    assert re.search(r"^data: (Fashion-MNIST|scikit-learn 8x8 digits): ", out, re.M), out
    assert re.search(r"^method\s+Spearman\s+sd\s+Kendall\s+pairs\s+seconds$", out, re.M), out
    methods = ["soft_rank", "st_rank", "perturbed(rank)"]
    rows = {}
    for name in [*methods, "label regression", "untrained"]:
        row = re.search(
            rf"^{re.escape(name)}\s+([-\d.]+)\s+(?:[\d.]+|-)\s+([-\d.]+)\s+([\d.]+)\s+(?:[\d.]+|-)$",
            out,
            re.M,
        )
        assert row, (name, out)
        spearman, kendall, pairs = (float(v) for v in row.groups())
        assert -1 <= spearman <= 1 and -1 <= kendall <= 1 and 0 <= pairs <= 1, (name, out)
        rows[name] = dict(spearman=spearman, kendall=kendall, pairs=pairs)
    untrained = rows.pop("untrained")
    # Every way through the ranks learns the order of the classes on held-out groups, far
    # beyond the network it started from (at smoke size, Spearman 0.76 to 0.92 on the
    # digits and 0.82 to 0.84 on Fashion-MNIST, from -0.01 and 0.23 untrained), and so does
    # the regression reference.
    for name, row in rows.items():
        assert row["spearman"] > max(untrained["spearman"] + 0.3, 0.6), (name, out)
        assert row["kendall"] > untrained["kendall"] + 0.2, (name, out)
        assert row["pairs"] > untrained["pairs"] + 0.15, (name, out)
    # The printed conclusion is the table's: its best ranking method has the highest Spearman.
    assert "every ranking method learns to order held-out images by class" in out, out
    best = re.search(r"^  (?:The best, )?(\S+) (?:ranks best )?\(([\d.]+)\)", out, re.M)
    assert best, out
    assert best.group(1) == max(methods, key=lambda name: rows[name]["spearman"]), out
    assert float(best.group(2)) == rows[best.group(1)]["spearman"], out
    assert f"figures written to {tmp_path}" in out, out
    figures = sorted(f.name for f in tmp_path.glob("*.png"))
    assert figures == ["ordered_group.png", "scores_by_class.png", "training_curves.png"], figures
    assert all(f.stat().st_size > 1000 for f in tmp_path.glob("*.png")), out


@pytest.mark.slow
def test_sort_benchmark_prints_every_row():
    out = _run("benchmarks/sort.py", "--quick", "--repeats", "2")
    for op in ("soft_rank fair", "soft_sort fair", "soft_rank adversarial", "st_sort", "st_rank"):
        assert re.search(rf"^{op}\s+4x64\s", out, re.M), (op, out)
