"""A mixture-of-experts layer in Flax NNX whose router picks k experts per token with
``jaxrelax.st_topk``, trained a few hundred steps inside ``nnx.jit``, beside the same layer
routed by ``lax.top_k``.

The router's forward pass is the exact k-hot of its top-k logits (each token really goes to k
experts); its backward pass is the VJP of ``soft_topk``. With ``lax.top_k`` the choice has no
gradient: the router learns only through the gate values of the experts it already chose,
and nothing ever tells it that a token would do better with another expert (the gradient at
the logits of the experts not chosen is 0 but for rounding, printed below; on this small
task both routers still reach the same error, the gate values being enough to split four
clusters). A load-balancing auxiliary loss (Fedus, Zoph & Shazeer, Switch Transformers,
2021, https://arxiv.org/abs/2101.03961) keeps every expert in use: its weight is relative to
the task loss, here a mean squared error that ends near 0.05, so 0.3 rather than the paper's
0.01 for a cross-entropy of a few nats (at 0.01 one expert ends with no tokens). The task:
tokens from four clusters, each with its own linear map, which experts can split between
them. For clarity every expert runs on every token and the gates mask them; a production
layer would dispatch tokens.

    python examples/flax_moe.py [--steps N]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax import lax

import jaxrelax

BALANCE_WEIGHT = 0.3


def top_k_hot(logits, k):
    """The k-hot of ``lax.top_k``: the same forward value as ``st_topk``, and no gradient."""
    return jnp.sum(jax.nn.one_hot(lax.top_k(logits, k)[1], logits.shape[-1]), -2)


ROUTERS = {"st_topk": jaxrelax.st_topk, "lax.top_k": top_k_hot}


class MixtureOfExperts(nnx.Module):
    def __init__(
        self, dim: int, hidden: int, num_experts: int, k: int, *, rngs: nnx.Rngs, route="st_topk"
    ):
        self.router = nnx.Linear(dim, num_experts, rngs=rngs)
        init = jax.nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=0)
        self.w_in = nnx.Param(init(rngs.params(), (num_experts, dim, hidden)))
        self.w_out = nnx.Param(init(rngs.params(), (num_experts, hidden, dim)))
        self.num_experts, self.k, self.route = num_experts, k, route

    def __call__(self, x, logits=None):
        """(outputs, load-balancing loss) for tokens ``x`` of shape (tokens, dim); the
        router's ``logits`` may be given (to differentiate with respect to them)."""
        logits = self.router(x) if logits is None else logits
        chosen = ROUTERS[self.route](logits, self.k)  # st_topk: soft_topk's VJP backward
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


def unchosen_gradient(model, x, y):
    """The largest task-loss gradient at the router logits of the experts a token did not
    choose: how much the router learns about choosing otherwise."""
    logits = model.router(x)

    def task_loss(logits):
        return jnp.mean((model(x, logits)[0] - y) ** 2)

    grad = jax.grad(task_loss)(logits)
    return float(jnp.max(jnp.abs(jnp.where(top_k_hot(logits, model.k) > 0, 0, grad))))


def train(route, x, y, steps, seed, verbose):
    dim, hidden, num_experts, k = x.shape[-1], 32, 8, 2
    model = MixtureOfExperts(dim, hidden, num_experts, k, rngs=nnx.Rngs(seed), route=route)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    history, batch = [], None
    for step in range(steps):
        batch = jax.random.randint(jax.random.key(step), (256,), 0, len(x))
        mse, balance = train_step(model, optimizer, x[batch], y[batch], BALANCE_WEIGHT)
        history.append((float(mse), float(balance)))
        if verbose and (step % 100 == 0 or step == steps - 1):
            print(f"{route:9} step {step:4d}  mse {mse:.4f}  load balance {balance:.3f} (1: even)")
    load = jnp.mean(jaxrelax.topk_mask(model.router(x), k), 0) / k
    gradient = unchosen_gradient(model, x[batch], y[batch])
    return {"history": history, "load": load, "unchosen_gradient": gradient}


def main(steps: int = 300, seed: int = 0, verbose: bool = True) -> dict:
    x, y = make_data(jax.random.key(seed), 2048, 8)
    results = {route: train(route, x, y, steps, seed, verbose) for route in ROUTERS}
    if verbose:
        print("\nrouter     final mse  least-used expert  task gradient at unchosen experts")
        for route, r in results.items():
            mse = sum(m for m, _ in r["history"][-20:]) / 20
            print(
                f"{route:9} {mse:10.4f}  {float(r['load'].min()):16.1%}  "
                f"{r['unchosen_gradient']:.2e}"
            )
        print(
            "share of the routed tokens per expert (st_topk):",
            jnp.round(results["st_topk"]["load"], 3),
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    main(parser.parse_args().steps)
