"""Run by test_sharding.py in a fresh process with 8 host devices: every entry of
tests/registry.py (variants included), jit-compiled on inputs sharded over a 2 x 4 Mesh (the
batch axis over one mesh axis and the class axis over the other, both at once), must give the
unsharded result, forward and backward.

The entries take a (16, 64) array as their kind of input: 16 slices of 64 (with a mask
where they take one, k = 8 for the k-of-n functions), 16 entries by 64 elementwise, 16
heatmaps of 8 x 8, or 16 single-feature 8 x 8 images for pooling. Each entry's values and
gradient are one program, compiled for the sharded inputs and for unsharded ones."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import registry  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

# (random bits do not depend on the sharding: partitionable threefry)
SHAPES = {registry.HEATMAPS: (16, 8, 8), registry.IMAGES: (16, 8, 8, 1)}
K = 8


def _call(entry, x, w):
    """The entry on x (reshaped to its kind of input), with the mask w where it takes one."""
    keywords = {"where": w} if entry.where else {}
    if entry.temperature == "temperature":
        keywords["temperature"] = 0.7
    if entry.k is not None:
        keywords["k"] = K
    return entry(x.reshape(SHAPES.get(entry.input, x.shape)), **keywords)


def _value_and_grad(entry):
    def fn(x, w):
        return _call(entry, x, w)

    return jax.jit(lambda x, w: (fn(x, w), jax.grad(lambda x: jnp.sum(fn(x, w) ** 2))(x)))


def main() -> int:
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("batch", "classes"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 64)), jnp.float32)
    w = jnp.asarray(rng.random((16, 64)) < 0.8).at[:, 0].set(True)
    programs = {name: _value_and_grad(entry) for name, entry in registry.ENTRIES.items()}
    expected = {name: jax.device_get(program(x, w)) for name, program in programs.items()}
    failures = []
    sharding = NamedSharding(mesh, PartitionSpec("batch", "classes"))
    xs, ws = jax.device_put(x, sharding), jax.device_put(w, sharding)
    for name, program in programs.items():
        got = program(xs, ws)
        for e, g in zip(expected[name], got, strict=True):
            e, g = np.asarray(e), np.asarray(g)
            # Sharded reductions add in another order: compare relative to the scale.
            if not np.allclose(e, g, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(e).max())):
                failures.append(f"{name}: max diff {np.abs(e - g).max()}")
        if got[1].sharding.device_set != set(jax.devices()):
            failures.append(f"{name}: gradient not sharded over the mesh")
    print("\n".join(failures) or f"ok: {len(registry.ENTRIES)} functions, both axes sharded")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
