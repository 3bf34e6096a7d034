import os
import subprocess
import sys
from pathlib import Path

import pytest
import registry


@pytest.mark.slow
def test_sharded_inputs_give_unsharded_results():
    """Runs sharding_script.py in a fresh process, where XLA_FLAGS can still create 8 devices:
    every entry of tests/registry.py, its batch and class axes sharded at once."""
    script = Path(__file__).with_name("sharding_script.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok: {len(registry.ENTRIES)} functions, both axes sharded" in result.stdout
