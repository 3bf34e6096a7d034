"""The package layout follows the rule stated in jaxrelax/__init__.py: a function's module
follows from its name, imports point one way, private names stay in their module, and a
``*_rule`` always has a custom derivative."""

import ast
import inspect
from pathlib import Path

import jax
import pytest

import jaxrelax

PACKAGE = Path(jaxrelax.__file__).parent
# The import order: a module may import only those before it.
ORDER = [
    "_checks",
    "_numerics",
    "_noise",
    "_threshold",
    "_hard",
    "_soft",
    "_straight_through",
    "_perturbation",
    "_gumbel",
    "_sparse",
    "_perturbed",
    "_topk",
    "_pool",
    "_sort",
]
PUBLIC_MODULES = {"diagnostics", "schedules"}


def _expected_module(name: str) -> str:
    """Where the rule puts a public function, guessed from its name alone."""
    if "topk" in name:
        return "_topk"
    if "pool" in name:
        return "_pool"
    if any(word in name for word in ("sort", "rank", "quantile")):
        return "_sort"
    if name == "perturbed":
        return "_perturbation"
    for prefix, module in [
        ("perturbed_", "_perturbed"),
        ("st_", "_straight_through"),
        ("straight_through", "_straight_through"),
        ("gumbel_", "_gumbel"),
        ("binary_concrete", "_gumbel"),
        ("sparsemax", "_sparse"),
        ("entmax", "_sparse"),
        ("hardmax", "_hard"),
    ]:
        if name.startswith(prefix):
            return module
    return "_soft"  # softmax, smooth_max, soft_argmax, spatial_soft_argmax


def _trees():
    return {path.stem: ast.parse(path.read_text()) for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_is_placed():
    private = {name for name in _trees() if name.startswith("_") and name != "__init__"}
    assert private == set(ORDER)


@pytest.mark.parametrize("name", sorted(set(jaxrelax.__all__) - PUBLIC_MODULES))
def test_public_function_lives_where_its_name_says(name):
    function = inspect.unwrap(getattr(jaxrelax, name))
    assert function.__module__ == f"jaxrelax.{_expected_module(name)}"


def test_imports_point_one_way():
    for module, tree in _trees().items():
        if module not in ORDER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                for alias in node.names:
                    assert alias.name in ORDER[: ORDER.index(module)], (module, alias.name)


def test_private_names_stay_in_their_module():
    for module, tree in _trees().items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ORDER
            ):
                assert not node.attr.startswith("_"), (module, f"{node.value.id}.{node.attr}")


def test_rules_have_custom_derivatives():
    derivatives = (jax.custom_vjp, jax.custom_jvp)
    for module in ORDER:
        namespace = vars(getattr(jaxrelax, module))
        for name, value in namespace.items():
            if name.endswith("_rule"):
                assert isinstance(value, derivatives), f"{module}.{name}"
            if isinstance(value, jax.custom_vjp):
                assert name.endswith("_rule"), f"{module}.{name}"
