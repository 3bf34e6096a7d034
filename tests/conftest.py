import functools
import operator
import os
import sys

# The tests run small arrays through many programs, so compiling dominates their time. XLA's
# CPU compiler is switched to its fast settings for them: no LLVM optimisation of the generated
# code, the element-wise fusion emitter in place of the newer MLIR one, and each program's code
# generated in one piece rather than split over threads (the workers already use every core).
# Together they compile the registry's programs (jit of grad, and Hessians) in about 40%
# of the default time; IEEE arithmetic is unchanged (no fast-math either way). The notebooks
# and benchmark scripts that test_scripts.py runs inherit them (the benchmarks that measure
# speed are run by hand, with XLA's defaults, not here). Set before jax starts.
FAST_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
    " --xla_cpu_parallel_codegen_split_count=1"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis.internal import constants_ast  # noqa: E402
from hypothesis.internal.conjecture import providers  # noqa: E402

import jaxrelax  # noqa: E402, F401

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

# Hypothesis also draws, now and then, the constants written in the local modules loaded at
# the time: the library's, and those of the examples and notebook helpers that some tests
# import. Which of those a worker has loaded depends on the tests it ran before, so the draws
# (and derandomize's promise) would depend on the schedule. The constants are fixed to the
# library's own, collected at the first draw. (Private hooks of Hypothesis: where they are
# gone, the draws are as Hypothesis makes them.)
if hasattr(providers, "_get_local_constants") and hasattr(constants_ast, "constants_from_module"):

    @functools.cache
    def _library_constants():
        modules = [m for name, m in sorted(sys.modules.items()) if name.startswith("jaxrelax")]
        return functools.reduce(
            operator.or_,
            map(constants_ast.constants_from_module, modules),
            constants_ast.Constants(),
        )

    providers._get_local_constants = _library_constants


# A script run by hand (it needs PyTorch), not a module to import for doctests.
collect_ignore = ["make_pool_oracles.py", "make_sort_peer.py"]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Orders the suite for pytest-xdist's ``--dist worksteal`` (pyproject.toml), where each
    worker runs a contiguous run of the tests and an idle worker takes the tail of the other's.

    The slow tests (subprocesses, documentation, training) go first, so that none of them
    starts last. The fuzz suites compile one program per family and configuration (shapes,
    axes, dtype, mask), shared by the tests of all the family's functions in that
    configuration in a process: those tests go next to each other, so that they run on one
    worker and no two workers compile the same program, and before the other tests, so that
    the tails the workers take from each other are independent tests.
    """

    def order(item):
        module = getattr(item, "module", None)  # doctests have none
        callspec = getattr(item, "callspec", None)
        fuzz = module is not None and module.__name__.startswith("test_fuzz") and callspec
        config_id = str(callspec.params.get("config", callspec.id)) if fuzz else ""
        group = (module.__name__, item.originalname, config_id) if fuzz else ()
        return item.get_closest_marker("slow") is None, not fuzz, group

    items.sort(key=order)


@pytest.fixture
def x64():
    """Runs the test with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
