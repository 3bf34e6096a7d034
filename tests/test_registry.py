"""tests/registry.py lists every public function once, and nothing else."""

import inspect
from pathlib import Path

import registry

import jaxrelax


def test_registry_is_the_public_api():
    functions = {n for n in jaxrelax.__all__ if not inspect.ismodule(getattr(jaxrelax, n))}
    modules = set(jaxrelax.__all__) - functions
    assert modules == set(registry.MODULES), "submodules of __all__ and registry.MODULES"
    missing = functions - set(registry.FUNCTIONS)
    assert not missing, f"public functions without a registry entry: {sorted(missing)}"
    extra = set(registry.FUNCTIONS) - functions
    assert not extra, f"registry entries that are not in jaxrelax.__all__: {sorted(extra)}"
    for name, entry in registry.FUNCTIONS.items():
        assert entry.variant is None and entry.name == name


def test_entries_are_well_formed():
    names = [entry.name for entry in registry.ENTRIES.values() if entry.variant is None]
    assert len(names) == len(set(names)), "one standard entry per function"
    for id_, entry in registry.ENTRIES.items():
        assert id_ == entry.id and entry.name in registry.FUNCTIONS
        assert entry.gradient in registry.GRADIENTS, id_
        assert entry.input in registry.INPUTS, id_
        assert entry.axis in (registry.ANY_AXIS, registry.ONE_AXIS, registry.NO_AXIS), id_
        if entry.input != registry.SLICES:
            assert entry.axis is registry.NO_AXIS and not entry.where, id_
        assert entry.reduces == (entry.empty is not None), id_  # a reduction says its empty value
        assert set(entry.dtypes) <= set(registry.DTYPES), id_
        # the options of a variant are keyword arguments of its function
        parameters = inspect.signature(getattr(jaxrelax, entry.name)).parameters
        assert set(entry.options) <= set(parameters), id_


def test_every_entry_is_fuzzed():
    # "file::test": a property-based test that draws the function's inputs (each fuzz
    # suite takes its functions from the registry, and checks it builds them all)
    tests = Path(__file__).parent
    for id_, entry in registry.ENTRIES.items():
        assert entry.fuzz is not None, f"{id_} names no fuzz test"
        file, test = entry.fuzz.split("::")
        assert f"\ndef {test}(" in (tests / file).read_text(), f"{id_}: no {entry.fuzz}"
