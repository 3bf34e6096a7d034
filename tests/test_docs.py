"""The documentation site builds with warnings as errors (nitpicky: every cross-reference to
our own names resolves), and has a page anchor for every public name and a page for every
notebook."""

import subprocess
import sys
from pathlib import Path

import pytest

import jaxrelax

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_the_documentation_builds_and_covers_every_name_and_notebook(tmp_path):
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html"]
    result = subprocess.run(
        [*command, str(ROOT / "docs"), str(out)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (out / "api.html").read_text()
    for name in jaxrelax.__all__:
        module = not callable(getattr(jaxrelax, name))
        anchor = f'id="module-jaxrelax.{name}"' if module else f'id="jaxrelax.{name}"'
        assert anchor in api, name
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        page = out / "notebooks" / f"{notebook.stem}.html"
        assert page.exists(), notebook.name
        assert "Traceback" not in page.read_text(), notebook.name
    assert "perturbed_argmax" in (out / "choosing.html").read_text()
    assert "Perturbed optimizers" in (out / "benchmarks.html").read_text()
