"""The threshold solver (``jaxrelax/_threshold.py``): the passes over the scores it needs on
the input families of ``benchmarks/threshold.py``, counted (not timed)."""

import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jaxrelax
from jaxrelax import _threshold

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import threshold as benchmark  # noqa: E402  (the benchmark's families, not a copy of them)

TARGET = benchmark.MAX_PASSES  # 8
FAMILIES = ["normal", "scaled by 100", "Cauchy", "many ties", "one outlier", "near uniform"]
# The most passes a row of the benchmark's 1024x1024 inputs may take. Where the solver does
# not reach the target, the bound is the count measured when it was last changed, so that a
# change that needs more fails here; the benchmark's docstring says why those miss.
ABOVE_TARGET = {
    ("sparsemax", "normal"): 10,
    ("entmax15", "normal"): 9,
    ("soft_topk", "scaled by 100"): 23,
    ("soft_topk", "Cauchy"): 38,
    ("soft_topk", "one outlier"): 10,
    ("sparse_topk", "normal"): 14,
    ("sparse_topk", "scaled by 100"): 22,
    ("sparse_topk", "Cauchy"): 38,
    ("sparse_topk", "one outlier"): 30,
}
FUNCTIONS = {
    "sparsemax": jaxrelax.sparsemax,
    "entmax15": jaxrelax.entmax15,
    "entmax alpha=1.3": functools.partial(jaxrelax.entmax, alpha=1.3),
    "soft_topk": functools.partial(jaxrelax.soft_topk, k=8),
    "sparse_topk": functools.partial(jaxrelax.sparse_topk, k=8),
}


@pytest.fixture(scope="module")
def inputs():
    families = benchmark.families(benchmark.PASSES_SHAPE)
    return {name: jnp.asarray(families[name]) for name in FAMILIES}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_passes_on_each_input_family(name, inputs):
    fn = jax.jit(FUNCTIONS[name])
    measured = {}
    with _threshold.counting_passes() as counts:
        for family, x in inputs.items():
            before = len(counts)
            jax.block_until_ready(fn(x))
            measured[family] = sum(counts[before:])  # a second solve, where one runs, counts
    limits = {family: ABOVE_TARGET.get((name, family), TARGET) for family in FAMILIES}
    assert all(1 <= measured[f] <= limits[f] for f in FAMILIES), (measured, limits)
