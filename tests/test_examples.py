"""The Flax and Equinox examples (examples/), at a small size: they train, and what they
print holds."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))


@pytest.mark.slow
def test_flax_mixture_of_experts_learns_and_uses_its_experts():
    import flax_moe

    results = flax_moe.main(steps=200, verbose=False)
    for route, result in results.items():
        mse = [m for m, _ in result["history"]]
        assert np.mean(mse[-20:]) < 0.02 * mse[0], (route, mse[0], mse[-20:])
        balance = [b for _, b in result["history"]]
        assert 1 <= balance[-1] < 1.3, route  # 1 when the routing is even, 8 when one takes all
        load = np.asarray(result["load"])
        np.testing.assert_allclose(load.sum(), 1, rtol=1e-5)  # each token goes to k experts
        assert load.min() >= 0.05, (route, load)  # every expert in use
    # lax.top_k's choice has no gradient: the router learns nothing about unchosen experts
    learned = results["st_topk"]["unchosen_gradient"]
    assert learned > 1e-5 and results["lax.top_k"]["unchosen_gradient"] < 1e-4 * learned


@pytest.mark.slow
def test_equinox_categorical_bottleneck_names_the_prototypes():
    import equinox_bottleneck

    result = equinox_bottleneck.main(steps=300, verbose=False)
    history = result["history"]
    assert np.mean(history[-20:]) < 0.5 * history[0]
    # 5% of the 64 pixels are flipped by the noise: 3.2 wrong per image at best, 32 at random.
    assert result["noise_floor"] == 3.2
    assert result["pixels_wrong"] < 6, result["pixels_wrong"]
