"""torch is optional: forge_sc never imports it, and works without it."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_forge_sc_never_imports_torch() -> None:
    code = (
        "import sys, forge_sc, forge_sc.testing, forge_sc.mesh.monarch\n"
        "from forge_sc._tensors import encode_result, stack_rows, unbind_result\n"
        "assert 'torch' not in sys.modules, 'forge_sc imported torch'\n"
        "assert stack_rows([[1.0], [2.0]]) == [[1.0], [2.0]]\n"
        "assert unbind_result([1, 2]) == [1, 2]\n"
        "assert encode_result({'a': [1]}) == {'a': [1]}\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
