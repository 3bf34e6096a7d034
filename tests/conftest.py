import os

# The tests run small arrays through many programs, so compiling dominates their time: XLA's
# backend optimisations are switched off for them (the fuzz suites already compile so), which
# roughly halves it; the notebooks and benchmark scripts that test_scripts.py runs inherit
# it (the benchmarks that measure speed are run by hand, not here). Set before jax starts.
NO_BACKEND_OPTIMISATION = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NO_BACKEND_OPTIMISATION}".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

# Hypothesis profiles (select one with pytest --hypothesis-profile=NAME).
#
# "ci", loaded by default: reproducible (derandomize: the same examples on every run, so a
# pass is a pass) and bounded. Compiling each shape and dtype dominates the cost of the
# property tests (test_fuzz.py), so they draw a few examples per function and configuration.
# It does not shrink a failure (shrinking every failing parametrization of a broken function
# takes minutes); the failing example is printed whole, with a blob to reproduce it.
# "shrink": the same examples, with failures shrunk to a minimal example.
# "thorough": ten times as many examples, shrunk.
_COMMON = dict(
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
settings.register_profile("ci", max_examples=10, phases=_NO_SHRINK, **_COMMON)
settings.register_profile("shrink", max_examples=10, **_COMMON)
settings.register_profile("thorough", max_examples=100, **_COMMON)
settings.load_profile("ci")


# A script run by hand (it needs PyTorch), not a module to import for doctests.
collect_ignore = ["make_pool_oracles.py"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Schedules the suite for pytest-xdist's ``--dist loadgroup`` (pyproject.toml).

    The fuzz suites compile one program per configuration (shapes, axes, dtype, mask), shared
    by all the tests of that configuration in a process: each configuration's tests form one
    group, run by one worker, so that no two workers compile the same program. The slow tests
    (subprocesses, documentation, training) go first, so that none of them starts last.
    """
    for item in items:
        module = getattr(item, "module", None)  # doctests have none
        callspec = getattr(item, "callspec", None)
        if module is not None and module.__name__.startswith("test_fuzz") and callspec:
            config_id = str(callspec.params.get("config", callspec.id))
            item.add_marker(pytest.mark.xdist_group(f"{module.__name__}:{config_id}"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
