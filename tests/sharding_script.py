"""Run by test_sharding.py in a fresh process with 8 host devices: each public function,
jit-compiled on inputs sharded over a Mesh (the batch axis, then the class axis), must give
the unsharded result, forward and backward."""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

import jaxrelax  # noqa: E402

KEY = jax.random.key(0)  # random bits do not depend on the sharding (partitionable threefry)
FUNCTIONS = {
    "hardmax": lambda x, w: jaxrelax.hardmax(x, where=w),
    "softmax": lambda x, w: jaxrelax.softmax(x, temperature=0.7, where=w),
    "smooth_max": lambda x, w: jaxrelax.smooth_max(x, temperature=0.7, where=w),
    "smooth_max_softmax": lambda x, w: jaxrelax.smooth_max(
        x, temperature=0.7, where=w, method="softmax"
    ),
    "soft_argmax": lambda x, w: jaxrelax.soft_argmax(x, temperature=0.7, where=w),
    "st_hardmax": lambda x, w: jaxrelax.st_hardmax(x, temperature=0.7, where=w),
    "st_argmax": lambda x, w: jaxrelax.st_argmax(x, temperature=0.7, where=w),
    "st_max": lambda x, w: jaxrelax.st_max(x, temperature=0.7, where=w),
    "spatial_soft_argmax": lambda x, w: jaxrelax.spatial_soft_argmax(
        x.reshape(16, 8, 8), temperature=0.7
    ),
    "gumbel_softmax": lambda x, w: jaxrelax.gumbel_softmax(KEY, x, temperature=0.7, where=w),
    "gumbel_softmax_hard": lambda x, w: jaxrelax.gumbel_softmax(
        KEY, x, temperature=0.7, hard=True, where=w
    ),
    "gumbel_rao": lambda x, w: jaxrelax.gumbel_rao(KEY, x, temperature=0.7, where=w),
    "binary_concrete_hard": lambda x, w: jaxrelax.binary_concrete(KEY, x, hard=True),
    "sparsemax": lambda x, w: jaxrelax.sparsemax(x, temperature=0.7, where=w),
    "entmax15": lambda x, w: jaxrelax.entmax15(x, temperature=0.7, where=w),
    "entmax_loss": lambda x, w: jaxrelax.entmax_loss(
        x, jax.nn.one_hot(jnp.argmax(x, -1), x.shape[-1]), where=w
    ),
    "topk_mask": lambda x, w: jaxrelax.topk_mask(x, 8, where=w, ties="uniform"),
    "soft_topk": lambda x, w: jaxrelax.soft_topk(x, 8, temperature=0.7, where=w),
    "sparse_topk": lambda x, w: jaxrelax.sparse_topk(x, 8, temperature=0.7, where=w),
    "st_topk": lambda x, w: jaxrelax.st_topk(x, 8, temperature=0.7, where=w),
    "gumbel_topk_hard": lambda x, w: jaxrelax.gumbel_topk(KEY, x, 8, hard=True, where=w),
    "perturbed_argmax": lambda x, w: jaxrelax.perturbed_argmax(KEY, x, num_samples=8, where=w),
    "perturbed_topk": lambda x, w: jaxrelax.perturbed_topk(KEY, x, 8, num_samples=4, where=w),
    "perturbed_fy_loss": lambda x, w: jaxrelax.perturbed_fy_loss(
        KEY, x, jax.nn.one_hot(jnp.argmax(x, -1), x.shape[-1]), num_samples=8, where=w
    ),
    "perturbed": lambda x, w: jaxrelax.perturbed(jaxrelax.hardmax, num_samples=8, batch_size=3)(
        KEY, x
    ),
    # pooling: the rows as 8x8 single-feature images, overlapping padded 3x3 windows
    "max_pool": lambda x, w: jaxrelax.max_pool(_images(x), (3, 3), (2, 2), "SAME"),
    "soft_pool": lambda x, w: jaxrelax.soft_pool(_images(x), (3, 3), (2, 2), "SAME"),
    "lse_pool": lambda x, w: jaxrelax.lse_pool(_images(x), (3, 3), (2, 2), "SAME"),
    "st_max_pool": lambda x, w: jaxrelax.st_max_pool(_images(x), (3, 3), (2, 2), "SAME"),
    "max_unpool": lambda x, w: jaxrelax.max_unpool(
        *jaxrelax.max_pool(_images(x), (2, 2), (2, 2), return_indices=True), (8, 8)
    ),
}


def _images(x):
    return x.reshape(16, 8, 8, 1)


def _value_and_grad(fn):
    return jax.jit(lambda x, w: (fn(x, w), jax.grad(lambda x: jnp.sum(fn(x, w) ** 2))(x)))


def main() -> int:
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("devices",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 64)), jnp.float32)
    w = jnp.asarray(rng.random((16, 64)) < 0.8).at[:, 0].set(True)
    failures = []
    for spec in [PartitionSpec("devices", None), PartitionSpec(None, "devices")]:
        sharding = NamedSharding(mesh, spec)
        xs, ws = jax.device_put(x, sharding), jax.device_put(w, sharding)
        for name, fn in FUNCTIONS.items():
            value_and_grad = _value_and_grad(fn)
            expected = value_and_grad(x, w)
            got = value_and_grad(xs, ws)
            for e, g in zip(expected, got, strict=True):
                e, g = np.asarray(e), np.asarray(g)
                # Sharded reductions add in another order: compare relative to the scale.
                if not np.allclose(e, g, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(e).max())):
                    failures.append(f"{name} sharded as {spec}: max diff {np.abs(e - g).max()}")
            if got[1].sharding.device_set != set(jax.devices()):
                failures.append(f"{name} sharded as {spec}: gradient not sharded over the mesh")
    print("\n".join(failures) or f"ok: {len(FUNCTIONS)} functions x 2 shardings")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
