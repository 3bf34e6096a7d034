"""The release step for the notebooks: execute every notebook script at full size and write
its paired .ipynb, so that the published outputs are those of the package being released
(each notebook prints ``jaxrelax <version>``; tests/test_scripts.py checks that the version
matches the package's).

    python notebooks/execute.py [NAME ...]     # all of them by default; from any directory

Uses jupytext and the notebooks' kernel (the ``notebooks`` extra); the figures go to the
ignored ``notebooks/figures/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = sorted(HERE.glob("[0-9]*.py")) if not names else [HERE / n for n in names]
    env = {k: v for k, v in os.environ.items() if k != "JAXRELAX_SMOKE"}  # full size
    jupytext = [sys.executable, "-m", "jupytext", "--set-formats", "ipynb,py:percent"]
    for script in scripts:
        start = time.perf_counter()
        result = subprocess.run([*jupytext, "--execute", script.name], cwd=HERE, env=env)
        print(f"{script.name}: {time.perf_counter() - start:.0f} s", flush=True)
        if result.returncode:
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
