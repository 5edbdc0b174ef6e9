"""Running a script in a child Python with ``BALLAST_NATIVE_PORTABLE`` set or unset.

The native kernels are chosen once, when :mod:`native` is imported, so the choice the
environment variable makes is only observable in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import native

ROOT = Path(__file__).resolve().parents[1]


def run_with_portable_env(script: str, env_value: str | None) -> Any:
    """Run ``script`` with the variable set to ``env_value`` (unset for None); return the JSON
    it prints."""
    env = {key: value for key, value in os.environ.items() if key != native.PORTABLE_ENV}
    if env_value is not None:
        env[native.PORTABLE_ENV] = env_value
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(proc.stdout)
