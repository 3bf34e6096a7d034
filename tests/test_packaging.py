"""The wheel and the sdist build, pass ``twine check``, and the wheel holds the package and
its ``py.typed`` marker, and nothing else of the repository."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import jaxrelax

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_wheel_and_sdist(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    wheels, sdists = list(tmp_path.glob("*.whl")), list(tmp_path.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(tmp_path.iterdir())
    assert wheels[0].name.startswith(f"jaxrelax-{jaxrelax.__version__}-")
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    names = zipfile.ZipFile(wheels[0]).namelist()
    package = {n for n in names if not n.startswith("jaxrelax-")}  # not the .dist-info
    modules = {f"jaxrelax/{p.name}" for p in (ROOT / "jaxrelax").glob("*.py")}
    assert package == modules | {"jaxrelax/py.typed"}, sorted(package ^ modules)
