"""A mixture-of-experts layer in Flax NNX whose router picks k experts per token with
``jaxrelax.st_topk``, trained a few hundred steps inside ``nnx.jit``.

The router's forward pass is the exact k-hot of its top-k logits (each token really goes to k
experts); its backward pass is the VJP of ``soft_topk``, so the router learns from the loss
where a plain ``lax.top_k`` would give it no gradient. A load-balancing auxiliary loss (Fedus,
Zoph & Shazeer, Switch Transformers, 2021, https://arxiv.org/abs/2101.03961) keeps the experts
in use. The task: tokens from four clusters, each with its own linear map, which experts
can split between them. For clarity every expert runs on every token and the gates mask
them; a production layer would dispatch tokens to their experts.

    python examples/flax_moe.py [--steps N]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxrelax


class MixtureOfExperts(nnx.Module):
    def __init__(self, dim: int, hidden: int, num_experts: int, k: int, *, rngs: nnx.Rngs):
        self.router = nnx.Linear(dim, num_experts, rngs=rngs)
        init = jax.nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=0)
        self.w_in = nnx.Param(init(rngs.params(), (num_experts, dim, hidden)))
        self.w_out = nnx.Param(init(rngs.params(), (num_experts, hidden, dim)))
        self.num_experts, self.k = num_experts, k

    def __call__(self, x):
        """(outputs, load-balancing loss) for tokens ``x`` of shape (tokens, dim)."""
        logits = self.router(x)
        chosen = jaxrelax.st_topk(logits, self.k)  # exact k-hot forward, soft_topk backward
        probs = jax.nn.softmax(logits)
        gates = chosen * probs / jnp.sum(chosen * probs, -1, keepdims=True)
        hidden = jax.nn.gelu(jnp.einsum("td,edh->teh", x, self.w_in[...]))
        outputs = jnp.einsum("te,teh,ehd->td", gates, hidden, self.w_out[...])
        # Switch Transformer's auxiliary loss: experts * sum_e (share of the routed tokens
        # going to e) * (mean router probability of e); 1 when both are uniform.
        share = jnp.mean(chosen, 0) / self.k
        balance = self.num_experts * jnp.sum(share * jnp.mean(probs, 0))
        return outputs, balance


def make_data(key, tokens: int, dim: int, clusters: int = 4):
    """Tokens around ``clusters`` centres; each cluster's target is its own linear map."""
    k_centre, k_map, k_pick, k_noise = jax.random.split(key, 4)
    centres = 3 * jax.random.normal(k_centre, (clusters, dim))
    maps = jax.random.normal(k_map, (clusters, dim, dim)) / jnp.sqrt(dim)
    cluster = jax.random.randint(k_pick, (tokens,), 0, clusters)
    x = centres[cluster] + jax.random.normal(k_noise, (tokens, dim))
    return x, jnp.einsum("td,tde->te", x, maps[cluster])


@nnx.jit
def train_step(model, optimizer, x, y, balance_weight):
    def loss_fn(model):
        outputs, balance = model(x)
        mse = jnp.mean((outputs - y) ** 2)
        return mse + balance_weight * balance, (mse, balance)

    (_, (mse, balance)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return mse, balance


def main(steps: int = 300, seed: int = 0, verbose: bool = True) -> dict:
    dim, hidden, num_experts, k = 8, 32, 8, 2
    x, y = make_data(jax.random.key(seed), 2048, dim)
    model = MixtureOfExperts(dim, hidden, num_experts, k, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    history = []
    for step in range(steps):
        batch = jax.random.randint(jax.random.key(step), (256,), 0, len(x))
        mse, balance = train_step(model, optimizer, x[batch], y[batch], 0.01)
        history.append((float(mse), float(balance)))
        if verbose and (step % 100 == 0 or step == steps - 1):
            print(f"step {step:4d}  mse {mse:.4f}  load balance {balance:.3f} (1 is even)")
    load = jnp.mean(jaxrelax.topk_mask(model.router(x), k), 0) / k
    if verbose:
        print("share of the routed tokens per expert:", jnp.round(load, 3))
    return {"history": history, "load": load}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
