"""The documentation site builds with warnings as errors (nitpicky: every cross-reference to
our own names resolves), and has a page anchor for every public name and a page for every
notebook."""

import re
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
    pages = {page: page.read_text() for page in out.rglob("*.html")}
    api = {p: text for p, text in pages.items() if p.parent == out / "api" and p.stem != "index"}
    for name in jaxrelax.__all__:
        module = not callable(getattr(jaxrelax, name))
        anchor = f'id="module-jaxrelax.{name}"' if module else f'id="jaxrelax.{name}"'
        assert sum(anchor in text for text in api.values()) == 1, name
    for page, text in api.items():  # each family's page opens with its summary table
        assert "autosummary" in text.split('id="jaxrelax.', 1)[0], page.name
    # Nothing is loaded from another host: scripts, stylesheets, images and fonts are the
    # site's own (MathJax included), so that the pages and their math render offline.
    for page, text in pages.items():
        loads = [
            re.search(r'(?:src|href)="([^"]*)"', attributes).group(1)
            for tag, attributes in re.findall(r"<(script|img|link|source|iframe)\b([^>]*)>", text)
            if re.search(r'(?:src|href)="', attributes)
            and (tag != "link" or re.search(r'rel="(stylesheet|preload|icon)', attributes))
        ]
        loads += re.findall(r"url\(['\"]?([^'\")]+)", text)
        foreign = [u for u in loads if re.match(r"(https?:)?//", u)]
        assert not foreign, (page.relative_to(out), foreign)
    assert (out / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert "_static/mathjax/tex-chtml.js" in pages[out / "api" / "sort.html"]
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        page = out / "notebooks" / f"{notebook.stem}.html"
        assert page.exists(), notebook.name
        assert "Traceback" not in page.read_text(), notebook.name
    choosing = (out / "choosing.html").read_text()
    for name in jaxrelax.__all__:  # every public function, or module, has its row
        module = not callable(getattr(jaxrelax, name))
        assert (f"jaxrelax.{name}" if module else f'title="jaxrelax.{name}"') in choosing, name
    assert "Perturbed optimizers" in (out / "benchmarks.html").read_text()
