"""A categorical bottleneck in Equinox: an autoencoder whose code is a handful of one-hot
latents, sampled with ``jaxrelax.gumbel_softmax(hard=True)`` and a temperature annealed by
``jaxrelax.schedules`` inside ``eqx.filter_jit``.

The forward pass sends exact one-hot samples to the decoder (what it will see at test time);
the backward pass is the straight-through Gumbel-softmax gradient at the scheduled
temperature (Jang, Gu & Poole, Categorical Reparameterization with Gumbel-Softmax, 2017,
https://arxiv.org/abs/1611.01144). The data: noisy binary images of ten prototypes, which
a code of two ten-way latents can name.

    python examples/equinox_bottleneck.py [--steps N]
"""

from __future__ import annotations

import argparse

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import jaxrelax

LATENTS, CLASSES, PIXELS = 2, 10, 64
NOISE = 0.05  # the share of pixels flipped at random


class Bottleneck(eqx.Module):
    encoder: eqx.nn.MLP
    decoder: eqx.nn.MLP

    def __init__(self, key):
        k_enc, k_dec = jax.random.split(key)
        self.encoder = eqx.nn.MLP(PIXELS, LATENTS * CLASSES, 128, 2, key=k_enc)
        self.decoder = eqx.nn.MLP(LATENTS * CLASSES, PIXELS, 128, 2, key=k_dec)

    def __call__(self, image, key, temperature):
        """Pixel logits and the code's logits for one image."""
        logits = self.encoder(image).reshape(LATENTS, CLASSES)
        code = jaxrelax.gumbel_softmax(key, logits, temperature=temperature, hard=True)
        return self.decoder(code.reshape(-1)), logits


def make_data(key, count: int):
    k_proto, k_pick, k_flip = jax.random.split(key, 3)
    prototypes = jax.random.bernoulli(k_proto, 0.5, (CLASSES, PIXELS))
    images = prototypes[jax.random.randint(k_pick, (count,), 0, CLASSES)]
    flips = jax.random.bernoulli(k_flip, NOISE, images.shape)
    return jnp.logical_xor(images, flips).astype(jnp.float32)


def loss_fn(model, images, key, temperature):
    keys = jax.random.split(key, len(images))
    pixel_logits, logits = jax.vmap(model, (0, 0, None))(images, keys, temperature)
    reconstruction = optax.sigmoid_binary_cross_entropy(pixel_logits, images).sum(-1)
    # KL of the code's categoricals from the uniform prior, as in a categorical VAE.
    log_q = jax.nn.log_softmax(logits)
    kl = jnp.sum(jnp.exp(log_q) * (log_q + jnp.log(CLASSES)), (-2, -1))
    return jnp.mean(reconstruction + kl)


SCHEDULE = jaxrelax.schedules.exponential_anneal(1.0, rate=3e-3, end_value=0.3)


@eqx.filter_jit
def train_step(model, opt_state, optimizer, images, key, step):
    temperature = SCHEDULE(step)  # traced: one compiled step for every temperature
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, images, key, temperature)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss, temperature


def main(steps: int = 600, seed: int = 0, verbose: bool = True) -> dict:
    images = make_data(jax.random.key(seed), 4096)
    model = Bottleneck(jax.random.key(seed + 1))
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    history = []
    for step in range(steps):
        key = jax.random.fold_in(jax.random.key(seed + 2), step)
        batch = images[jax.random.randint(key, (128,), 0, len(images))]
        # The step as an array: filter_jit would compile once per value of a Python int.
        step_array = jnp.asarray(step)
        model, opt_state, loss, t = train_step(model, opt_state, optimizer, batch, key, step_array)
        history.append(float(loss))
        if verbose and (step % 150 == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {loss:7.3f} nats  temperature {t:.3f}")
    # Reconstruction error of the hard code: pixels wrong out of 64 (5% flipped by the noise).
    logits = jax.vmap(model.encoder)(images).reshape(-1, LATENTS, CLASSES)
    code = jax.nn.one_hot(jnp.argmax(logits, -1), CLASSES).reshape(len(images), -1)
    wrong = jnp.mean((jax.vmap(model.decoder)(code) > 0) != (images > 0.5)) * PIXELS
    floor = NOISE * PIXELS  # a decoder that returns the noiseless prototype still gets these
    if verbose:
        print(
            f"pixels wrong per image, decoded from the most likely code: {wrong:.2f} "
            f"(the noise floor, {NOISE:.0%} of {PIXELS} pixels flipped: {floor:.1f}; "
            f"a random guess: {PIXELS / 2:.0f})"
        )
    return {"history": history, "pixels_wrong": float(wrong), "noise_floor": floor}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    main(parser.parse_args().steps)
