"""Bad input gets a clear error naming the argument."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxrelax

X = jnp.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
TEMPERED = {
    "softmax": jaxrelax.softmax,
    "smooth_max": jaxrelax.smooth_max,
    "soft_argmax": jaxrelax.soft_argmax,
    "st_hardmax": jaxrelax.st_hardmax,
    "st_argmax": jaxrelax.st_argmax,
    "st_max": jaxrelax.st_max,
    "sparsemax": jaxrelax.sparsemax,
    "entmax15": jaxrelax.entmax15,
    "entmax": lambda x, axis=-1, **kwargs: jaxrelax.entmax(x, 1.3, axis, **kwargs),
}
MASKED = {"hardmax": jaxrelax.hardmax, **TEMPERED}


@pytest.mark.parametrize(
    "temperature", [0.0, -1.0, np.nan, np.inf, 1e-45, np.array([[1.0], [0.0]])]
)
@pytest.mark.parametrize("name", TEMPERED)
def test_bad_temperature(name, temperature):
    with pytest.raises(ValueError, match="temperature"):
        TEMPERED[name](X, temperature=temperature)


def test_bad_temperature_spatial():
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.spatial_soft_argmax(X, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.spatial_soft_argmax(jnp.ones((2, 3, 4)), temperature=jnp.ones((2, 3, 1)))


@pytest.mark.parametrize("name", TEMPERED)
def test_temperature_shape(name):
    with pytest.raises(ValueError, match="temperature of shape"):
        TEMPERED[name](X, temperature=jnp.ones((2, 3)))  # not size 1 along the axis
    with pytest.raises(ValueError, match="temperature of shape"):
        TEMPERED[name](X, temperature=jnp.ones((3, 1)))  # does not broadcast
    with pytest.raises(TypeError, match="temperature"):
        TEMPERED[name](X, temperature=1j)


@pytest.mark.parametrize("name", MASKED)
def test_bad_x(name):
    with pytest.raises(TypeError, match="x must be real"):
        MASKED[name](X.astype(jnp.complex64))
    with pytest.raises(TypeError, match="x must be"):
        MASKED[name]("scores")
    with pytest.raises(ValueError, match="x must have at least"):
        MASKED[name](jnp.float32(1.0))


@pytest.mark.parametrize("name", MASKED)
def test_bad_axis(name):
    fn = MASKED[name]
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        fn(X, 2)
    with pytest.raises(ValueError, match="axis -3 is out of range"):
        fn(X, -3)
    with pytest.raises(TypeError, match="axis"):
        fn(X, 1.0)
    with pytest.raises(TypeError, match="axis"):
        fn(X, True)
    if name in ("soft_argmax", "st_argmax"):
        with pytest.raises(TypeError, match="axis must be a single int"):
            fn(X, (0, 1))
    else:
        with pytest.raises(ValueError, match="axis must not repeat"):
            fn(X, (1, -1))
        with pytest.raises(ValueError, match="axis must name at least one"):
            fn(X, ())


@pytest.mark.parametrize("name", MASKED)
def test_bad_mask(name):
    fn = MASKED[name]
    with pytest.raises(TypeError, match="where must be a boolean mask"):
        fn(X, where=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="where of shape"):
        fn(X, where=jnp.ones((2,), bool))
    with pytest.raises(ValueError, match="where of shape"):
        fn(X, where=jnp.ones((1, 2, 3), bool))  # broadcasts, but not *to* x


def test_bad_choices():
    with pytest.raises(ValueError, match="ties must be one of"):
        jaxrelax.hardmax(X, ties="last")
    with pytest.raises(ValueError, match="ties must be one of"):
        jaxrelax.st_hardmax(X, ties=None)
    with pytest.raises(ValueError, match="method must be one of"):
        jaxrelax.smooth_max(X, method="mellowmax")
    with pytest.raises(ValueError, match="method must be one of"):
        jaxrelax.st_max(X, method="max")
    with pytest.raises(ValueError, match="backward must be one of"):
        jaxrelax.st_hardmax(X, backward="sparsemax")


def test_spatial_needs_two_axes():
    with pytest.raises(ValueError, match="at least 2 dimension"):
        jaxrelax.spatial_soft_argmax(jnp.ones(5))
