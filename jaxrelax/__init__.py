"""jaxrelax: differentiable relaxations of discrete choices in JAX.

Where things live (a function's module follows from its name):

- A relaxation of one choice among n lives in the module of its technique: ``_hard``
  (hardmax), ``_soft`` (softmax, smooth_max, soft_argmax, spatial_soft_argmax),
  ``_straight_through`` (st_*), ``_gumbel`` (gumbel_softmax, gumbel_rao, binary_concrete),
  ``_sparse`` (sparsemax, entmax and their losses) and ``_perturbed`` (perturbed_argmax,
  perturbed_max, perturbed_fy_loss).
- A larger choice has one module holding all its techniques: ``_topk`` for k of n (topk_mask,
  soft_topk, sparse_topk, st_topk, gumbel_topk, perturbed_topk) and ``_pool`` for windows
  (max_pool, max_unpool, soft_pool, lse_pool, st_max_pool) and ``_sort`` for orders (rank,
  soft_sort, soft_rank, soft_quantile, st_sort, st_rank).
- Shared machinery lives in a module named after it: ``_checks`` (argument checks and
  canonicalisation), ``_numerics`` (masks, infinities, NaN and the shift by the slice
  maximum), ``_noise`` (random bits and the perturbation noises), ``_threshold`` (the threshold
  solver of the sparse and top-k relaxations), ``_straight_through`` (the straight-through
  combinator) and ``_perturbation`` (the perturbation estimator, and ``perturbed``).

Imports point one way, down this list: the shared plumbing (``_checks``, ``_numerics``,
``_noise``, ``_threshold``); the hard and soft choices every relaxation is built from
(``_hard``, ``_soft``); the combinators (``_straight_through``, ``_perturbation``); the other
one-of-n techniques; the larger choices. A name without a leading underscore in a private
module is one that later modules may use; ``name_impl`` computes the public ``name`` on
checked arguments, and a ``*_rule`` always has a custom derivative (``jax.custom_vjp`` or
``jax.custom_jvp``). ``tests/test_layout.py`` checks these rules.
"""

from importlib.metadata import PackageNotFoundError, version

from . import diagnostics as diagnostics
from . import schedules as schedules
from ._gumbel import binary_concrete as binary_concrete
from ._gumbel import gumbel_rao as gumbel_rao
from ._gumbel import gumbel_softmax as gumbel_softmax
from ._hard import hardmax as hardmax
from ._perturbation import perturbed as perturbed
from ._perturbed import perturbed_argmax as perturbed_argmax
from ._perturbed import perturbed_fy_loss as perturbed_fy_loss
from ._perturbed import perturbed_max as perturbed_max
from ._pool import lse_pool as lse_pool
from ._pool import max_pool as max_pool
from ._pool import max_unpool as max_unpool
from ._pool import soft_pool as soft_pool
from ._pool import st_max_pool as st_max_pool
from ._soft import smooth_max as smooth_max
from ._soft import soft_argmax as soft_argmax
from ._soft import softmax as softmax
from ._soft import spatial_soft_argmax as spatial_soft_argmax
from ._sort import rank as rank
from ._sort import soft_quantile as soft_quantile
from ._sort import soft_rank as soft_rank
from ._sort import soft_sort as soft_sort
from ._sort import st_rank as st_rank
from ._sort import st_sort as st_sort
from ._sparse import entmax as entmax
from ._sparse import entmax15 as entmax15
from ._sparse import entmax_loss as entmax_loss
from ._sparse import sparsemax as sparsemax
from ._sparse import sparsemax_loss as sparsemax_loss
from ._straight_through import st_argmax as st_argmax
from ._straight_through import st_hardmax as st_hardmax
from ._straight_through import st_max as st_max
from ._straight_through import straight_through as straight_through
from ._topk import gumbel_topk as gumbel_topk
from ._topk import perturbed_topk as perturbed_topk
from ._topk import soft_topk as soft_topk
from ._topk import sparse_topk as sparse_topk
from ._topk import st_topk as st_topk
from ._topk import topk_mask as topk_mask

try:
    __version__ = version("jaxrelax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "binary_concrete",
    "diagnostics",
    "entmax",
    "entmax15",
    "entmax_loss",
    "gumbel_rao",
    "gumbel_softmax",
    "gumbel_topk",
    "hardmax",
    "lse_pool",
    "max_pool",
    "max_unpool",
    "perturbed",
    "perturbed_argmax",
    "perturbed_fy_loss",
    "perturbed_max",
    "perturbed_topk",
    "rank",
    "schedules",
    "smooth_max",
    "soft_argmax",
    "soft_pool",
    "soft_quantile",
    "soft_rank",
    "soft_sort",
    "soft_topk",
    "softmax",
    "sparse_topk",
    "sparsemax",
    "sparsemax_loss",
    "spatial_soft_argmax",
    "st_argmax",
    "st_hardmax",
    "st_max",
    "st_max_pool",
    "st_rank",
    "st_sort",
    "st_topk",
    "straight_through",
    "topk_mask",
]
