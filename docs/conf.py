"""Sphinx configuration: MyST-NB pages, the API reference from the docstrings, and the
notebooks rendered from their executed .ipynb files (not executed again)."""

import shutil
from pathlib import Path

import jaxrelax

ROOT = Path(__file__).resolve().parent.parent

project = "jaxrelax"
author = "the jaxrelax developers"
copyright = "2026, the jaxrelax developers"
release = jaxrelax.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from the site itself: math renders offline
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks' outputs are those of their executed .ipynb
nb_merge_streams = True

autodoc_typehints = "none"  # the docstrings say what each argument is
autodoc_member_order = "bysource"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
nitpicky = True
# Names the docstrings mention that are not ours and have no inventory offline.
nitpick_ignore_regex = [(r"py:.*", r"(jax|optax|numpy|flax|equinox)\..*")]
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "furo"
html_title = f"jaxrelax {release}"
html_static_path = ["_static"]
html_css_files = ["tables.css"]  # wide tables scroll instead of being cut

# The notebooks live in notebooks/ (their Jupytext .py sources beside them); the pages are
# built from copies of the executed .ipynb files, with the figures they link to.
NOTEBOOKS = Path(__file__).parent / "notebooks"
shutil.rmtree(NOTEBOOKS, ignore_errors=True)
NOTEBOOKS.mkdir()
for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    shutil.copy(notebook, NOTEBOOKS / notebook.name)
