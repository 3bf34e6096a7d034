import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrelax
from jaxrelax import schedules

NAN, INF = float("nan"), float("inf")


def test_exponential_anneal_is_jangs_formula():
    initial, rate, minimum, interval = 2.0, 3e-3, 0.4, 25
    schedule = schedules.exponential_anneal(
        initial, rate=rate, end_value=minimum, interval=interval
    )
    steps = np.arange(0, 2000, 7)
    expected = np.maximum(minimum, initial * np.exp(-rate * interval * np.floor(steps / interval)))
    got = jax.vmap(schedule)(jnp.asarray(steps))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # updated every `interval` steps: constant within an interval
    assert float(schedule(interval - 1)) == initial and float(schedule(interval)) < initial


def test_defaults_match_the_paper():
    schedule = schedules.exponential_anneal()
    for step in [0, 1, 1000, 6931, 10_000, 50_000]:
        expected = max(0.5, np.exp(-1e-4 * step))
        np.testing.assert_allclose(schedule(step), expected, rtol=1e-5)


def test_other_schedules():
    linear = schedules.linear_anneal(1.0, 0.1, 100)
    np.testing.assert_allclose(
        [linear(0), linear(50), linear(100), linear(500)], [1, 0.55, 0.1, 0.1], rtol=1e-6
    )
    cosine = schedules.cosine_anneal(1.0, end_value=0.1, decay_steps=100)
    expected = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.array([0, 25, 50, 100]) / 100))
    np.testing.assert_allclose([cosine(s) for s in [0, 25, 50, 100]], expected, rtol=1e-5)
    assert float(cosine(1000)) == pytest.approx(0.1)
    piecewise = schedules.piecewise_anneal(1.0, {10: 0.5, 20: 0.5})
    np.testing.assert_allclose(
        [piecewise(s) for s in [0, 10, 19, 20, 99]], [1, 0.5, 0.5, 0.25, 0.25]
    )


def test_annealed_temperature_in_a_jitted_optax_step():
    schedule = schedules.exponential_anneal(1.0, rate=0.05, end_value=0.1, interval=1)
    optimizer = optax.sgd(0.1)
    key = jax.random.key(0)
    cost = jnp.array([0.3, 0.0, 0.9, 0.5])

    @jax.jit
    def step(logits, state, count):
        temperature = schedule(count)
        sample_key = jax.random.fold_in(key, count)

        def loss(logits):
            sample = jaxrelax.gumbel_softmax(sample_key, logits, temperature=temperature, hard=True)
            return jnp.dot(sample, cost)

        grads = jax.grad(loss)(logits)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(logits, updates), state, temperature

    logits = jnp.zeros(4)
    state = optimizer.init(logits)
    temperatures = []
    for count in range(300):
        logits, state, temperature = step(logits, state, count)
        temperatures.append(float(temperature))
    assert temperatures[0] == 1.0 and temperatures[-1] == pytest.approx(0.1)
    assert int(jnp.argmax(logits)) == 1  # the cheapest choice wins


def test_exponential_anneal_stays_accurate_over_long_runs():
    # A decay rate rounded to float32 would compound its error with the step count.
    schedule = schedules.exponential_anneal(1.0, rate=1e-4, end_value=1e-6, interval=1)
    steps = np.array([1_000, 30_000, 100_000])
    np.testing.assert_allclose(
        jax.vmap(schedule)(jnp.asarray(steps)), np.exp(-1e-4 * steps), rtol=2e-6
    )


# Edges: exact ends, clamping, negative steps, int and float steps, eager and under jit.


def _readings(schedule, steps):
    """The schedule at ``steps`` read eagerly, under jit and vmap, as ints and floats; and the
    steps each reading saw (float32 rounds the largest)."""
    ints = np.asarray(steps, np.int32)
    floats = ints.astype(np.float32)
    jitted = jax.jit(schedule)
    readings = {
        "eager int": [schedule(int(s)) for s in ints],
        "eager numpy int": [schedule(s) for s in ints],
        "eager float": [schedule(float(s)) for s in floats],
        "jit int": [jitted(s) for s in ints],
        "jit float": [jitted(s) for s in floats],
        "jit vmap int": jax.jit(jax.vmap(schedule))(ints),
        "vmap float": jax.vmap(schedule)(floats),
    }
    for name, values in readings.items():
        values = np.asarray(values)
        assert values.dtype == np.float32, name
        yield name, values, (floats if "float" in name else ints).astype(np.float64)


def _check_edges(schedule, oracle, steps, initial, minimum, end, rtol, atol):
    """Exactly ``initial`` at steps <= 0, exactly ``minimum`` from ``end`` on, never outside
    ``[minimum, initial]`` (all in float32), and the float64 ``oracle`` in between."""
    top, bottom = np.float32(initial), np.float32(minimum)
    for name, got, seen in _readings(schedule, steps):
        expected = oracle(np.maximum(seen, 0))
        assert (got[seen <= 0] == top).all(), (name, got)
        assert (got[seen >= end] == bottom).all(), (name, got)
        assert ((bottom <= got) & (got <= top)).all(), (name, got)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=name)


def _steps(end):
    return sorted({-7, -1, 0, 1, end // 3, end // 2, end - 1, end, end + 1, 3 * end + 5, 2**31 - 1})


RANGES = [  # (initial, minimum, steps)
    (2.0, 1e-8, 10),  # went below the minimum, even negative, under jit
    (1.9, 0.5, 10),  # step 0 gave 1.9000001
    (1.9, 0.1, 7),
    (1.0, 1.0, 5),  # minimum == initial
    (0.3, 0.29999, 3),
    (1.0, 0.1, 1),
    (1e-3, 1e-8, 1000),
    (100.0, 0.7, 97),
    (5e30, 3e-30, 12),
    (0.7, 0.1, 13),
    (1.0, 1e-8, 100_000),
]


@pytest.mark.parametrize("initial, minimum, steps", RANGES)
def test_linear_anneal_edges(initial, minimum, steps):
    def oracle(t):
        return initial + (minimum - initial) * np.minimum(t, steps) / steps

    schedule = schedules.linear_anneal(initial, minimum, steps)
    _check_edges(schedule, oracle, _steps(steps), initial, minimum, steps, 1e-6, 1e-6 * initial)


@pytest.mark.parametrize("initial, minimum, steps", RANGES)
def test_cosine_anneal_edges(initial, minimum, steps):
    def oracle(t):
        half_turns = np.minimum(t, steps) / steps
        return minimum + (initial - minimum) * (1 + np.cos(np.pi * half_turns)) / 2

    schedule = schedules.cosine_anneal(initial, end_value=minimum, decay_steps=steps)
    _check_edges(schedule, oracle, _steps(steps), initial, minimum, steps, 1e-6, 1e-6 * initial)


@pytest.mark.parametrize(
    "initial, rate, minimum, interval",
    [
        (1.0, 1e-4, 0.5, 1),
        (2.0, 3e-3, 0.4, 25),
        (1.9, 0.05, 1e-8, 3),
        (1.9, 0.0, 0.5, 4),  # constant
        (1.0, 1.0, 1.0, 1),  # minimum == initial
        (1e-3, 10.0, 1e-8, 7),
        (5e30, 2.0, 3e-30, 4),
        (0.7, 1e300, 0.1, 2),  # at the minimum after one interval
        (0.7, 1e-300, 0.1, 2),  # constant in float32
    ],
)
def test_exponential_anneal_edges(initial, rate, minimum, interval):
    def unclamped(t):
        with np.errstate(over="ignore"):  # rate 1e300: exp(-inf) = 0
            return initial * np.exp(-rate * interval * np.floor(t / interval))

    # the first update at or below the minimum; the float32 decay may cross it an update
    # earlier or later, so exactness is asserted from the update after (never, if constant)
    crossing = math.log(initial / minimum) / rate / interval if rate else math.inf
    end = interval * (math.ceil(crossing) + 1) if crossing < 1e6 else math.inf
    steps = _steps(end if crossing < 1e6 else 1000)
    rtol = 1e-6 + 2e-7 * math.log(initial / minimum)  # the float32 error grows with the exponent
    schedule = schedules.exponential_anneal(
        initial, rate=rate, end_value=minimum, interval=interval
    )
    oracle = lambda t: np.maximum(minimum, unclamped(t))  # noqa: E731
    _check_edges(schedule, oracle, steps, initial, minimum, end, rtol, atol=0)


@pytest.mark.parametrize(
    "initial, boundaries_and_scales",
    [
        (1.0, {10: 0.5, 20: 0.5}),
        (1.9, {3: 0.1, 5: 30.0, 9: 1e-3}),  # up as well as down
        (2.0, {0: 0.25, 100: 0.5}),  # a boundary at step 0
        (1e-30, {1: 1e-8, 2: 1e-8}),  # down to 1e-46: only in float64
        (0.3, {}),
        (1.0, {2**31 - 1: 0.5}),
    ],
)
def test_piecewise_anneal_edges(initial, boundaries_and_scales):
    if initial * math.prod(boundaries_and_scales.values()) < np.finfo(np.float32).tiny:
        with pytest.raises(ValueError, match="^boundaries_and_scales .* float32"):
            schedules.piecewise_anneal(initial, boundaries_and_scales)
        return

    def oracle(t):
        items = boundaries_and_scales.items()
        return np.array([initial * math.prod(s for b, s in items if b <= step) for step in t])

    values = oracle(np.array([0] + list(boundaries_and_scales)))
    schedule = schedules.piecewise_anneal(initial, boundaries_and_scales)
    steps = sorted({-5, -1, 0, 1, 2, 3, 4, 5, 9, 10, 11, 20, 99, 100, 2**31 - 1})
    for name, got, seen in _readings(schedule, steps):
        expected = oracle(np.maximum(seen, 0))  # a negative step reads as step 0
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=name)
        assert (got[seen <= 0] == np.float32(values[0])).all(), (name, got)
        assert (got >= np.float32(values.min())).all() and (got <= np.float32(values.max())).all()


def _cosine(init_value, end_value, steps):
    return schedules.cosine_anneal(init_value, end_value=end_value, decay_steps=steps)


@settings(max_examples=25, deadline=None)
@given(
    st.floats(-28, 30),
    st.floats(0, 1),
    st.integers(1, 2**31 - 1),
    st.sampled_from([schedules.linear_anneal, _cosine]),
)
def test_any_range_ends_exactly(log_initial, fraction, steps, build):
    initial = 10.0**log_initial
    minimum = initial * 10.0 ** (-9 * fraction)  # from initial (fraction 0) to 1e-9 initial
    schedule, jitted = build(initial, minimum, steps), jax.jit(build(initial, minimum, steps))
    for read in (schedule, jitted):
        assert read(0) == np.float32(initial) and read(-1.5) == np.float32(initial)
        assert read(steps) == np.float32(minimum) and read(2**31 - 1) == np.float32(minimum)
        middle = read(steps // 2)
        assert np.float32(minimum) <= middle <= np.float32(initial)


def test_exact_ends_in_float64(x64):
    for build in (schedules.linear_anneal, _cosine):
        schedule = build(1.9, 1e-8, 10)
        for read in (schedule, jax.jit(schedule)):
            assert read(0) == 1.9 and read(0.0) == 1.9 and read(-3) == 1.9
            assert read(10) == 1e-8 and read(11.5) == 1e-8
            assert all(1e-8 <= read(step) <= 1.9 for step in range(11))


# Arguments: wrong types raise TypeError, bad values ValueError, each naming the argument.

BUILDERS = {
    "exponential_anneal": dict(init_value=1.0, rate=1 / 64, end_value=0.5, interval=2),
    "linear_anneal": dict(init_value=1.0, end_value=0.5, transition_steps=10),
    "cosine_anneal": dict(init_value=1.0, end_value=0.5, decay_steps=10),
    "piecewise_anneal": dict(init_value=1.0, boundaries_and_scales={10: 0.5, 20: 4.0}),
}
KINDS = {
    "init_value": "temperature",
    "end_value": "temperature",
    "rate": "rate",
    "interval": "count",
    "transition_steps": "count",
    "decay_steps": "count",
    "boundaries_and_scales": "mapping",
}
_NOT_NUMBERS = [None, "1.0", True, np.bool_(False), 1 + 0j, jnp.ones(2), np.ones(1), [1.0]]
BAD = {
    "temperature": [(v, TypeError) for v in _NOT_NUMBERS + [jnp.array(True)]]
    + [
        (v, ValueError)
        for v in [NAN, INF, -INF, 0.0, -1.0, np.float32(NAN), jnp.array(-1.0), 1e-39, 1e39]
        + [10**400, -(10**400)]
    ],
    "rate": [(v, TypeError) for v in _NOT_NUMBERS]
    + [(v, ValueError) for v in [NAN, INF, -INF, -1e-3, np.float64(-1), jnp.array(NAN), 10**400]],
    "count": [
        (v, TypeError)
        for v in _NOT_NUMBERS + [10.0, np.float32(10), jnp.array(10.0), NAN, INF, jnp.array(True)]
    ]
    + [(v, ValueError) for v in [0, -3, np.int64(-3), jnp.array(0), 2**31, 10**400]],
    "mapping": [(v, TypeError) for v in [None, "10: 0.5", [(10, 0.5)], True, NAN, 0.5]]
    + [
        (v, TypeError)
        for v in [{10.0: 0.5}, {True: 0.5}, {None: 0.5}, {10: None}, {10: "0.5"}, {10: True}]
    ]
    + [
        (v, ValueError)
        for v in [
            {-1: 0.5},
            {2**31: 0.5},
            {10: NAN},
            {10: INF},
            {10: 0.0},
            {10: -0.5},
            {10: 1e-20, 20: 1e-20},  # underflows float32
            {10: 1e20, 20: 1e20},  # overflows float32
        ]
    ],
}
BAD_CASES = [
    pytest.param(function, name, value, error, id=f"{function}-{name}-{value!r:.40}")
    for function, defaults in BUILDERS.items()
    for name in defaults
    for value, error in BAD[KINDS[name]]
] + [
    pytest.param("linear_anneal", "end_value", 1.5, ValueError, id="end above init"),
    pytest.param("cosine_anneal", "end_value", 1.0 + 1e-7, ValueError, id="end just above"),
    pytest.param("exponential_anneal", "end_value", 2.0, ValueError, id="exponential end"),
]


@pytest.mark.parametrize("function, name, value, error", BAD_CASES)
def test_bad_arguments_name_the_argument(function, name, value, error):
    with pytest.raises(error, match=rf"^{name}\b"):
        getattr(schedules, function)(**{**BUILDERS[function], name: value})


@pytest.mark.parametrize(
    "function, name", [(f, n) for f, d in BUILDERS.items() for n in d if KINDS[n] != "mapping"]
)
def test_traced_arguments_are_rejected(function, name):
    value = BUILDERS[function][name]
    with pytest.raises(TypeError, match=rf"^{name} must be a concrete"):
        jax.jit(lambda v: getattr(schedules, function)(**{**BUILDERS[function], name: v}))(value)


_NUMBER_FORMS = [np.float32, np.float64, np.asarray, jnp.asarray, jnp.float32]
_COUNT_FORMS = [np.int64, np.int32, np.uint16, np.asarray, jnp.asarray, jnp.int32]


@pytest.mark.parametrize(
    "function, name, form",
    [
        pytest.param(f, n, form, id=f"{f}-{n}-{form.__module__}.{form.__name__}")
        for f, d in BUILDERS.items()
        for n in d
        if KINDS[n] != "mapping"
        for form in (_COUNT_FORMS if KINDS[n] == "count" else _NUMBER_FORMS)
    ],
)
def test_numpy_scalars_and_0d_arrays_are_numbers(function, name, form):
    # The defaults are exact in float32, so every form gives the very same schedule.
    build = getattr(schedules, function)
    expected = build(**BUILDERS[function])
    got = build(**{**BUILDERS[function], name: form(BUILDERS[function][name])})
    steps = jnp.array([-1, 0, 1, 2, 5, 9, 10, 11, 25, 100, 1000])
    np.testing.assert_array_equal(jax.vmap(got)(steps), jax.vmap(expected)(steps))


def test_piecewise_anneal_takes_numpy_and_0d_array_steps_and_scales():
    expected = schedules.piecewise_anneal(1.0, {10: 0.5, 20: 4.0})
    steps = jnp.arange(-2, 30)
    for boundaries_and_scales in [
        {np.int64(10): np.float32(0.5), np.uint16(20): jnp.array(4.0)},
        {np.int32(20): np.asarray(4), 10: jnp.float32(0.5)},
    ]:
        got = schedules.piecewise_anneal(jnp.array(1.0), boundaries_and_scales)
        np.testing.assert_array_equal(jax.vmap(got)(steps), jax.vmap(expected)(steps))
