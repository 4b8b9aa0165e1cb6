"""A function's image environment on this machine: what its Dockerfile target installs.

`function_environment` exports the stage's slice of uv.lock (`uv export --package
geozarr-<stage>`, as the image's `uv sync --package` selects it) and installs it with
`uv pip install` into a fresh virtual environment, without the workspace's dev tools or the
local stand-ins. Tests start a function from it alone; the cold-start benchmark measures it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from geozarr_pipeline.events import Stage


def function_environment(stage: Stage, root: Path, repository: Path) -> Path:
    """Install the stage's image environment under `root`; returns its `bin` folder."""
    root.mkdir(parents=True, exist_ok=True)
    requirements = root / "requirements.txt"
    subprocess.run(
        [
            *("uv", "export", "--frozen", "--no-dev", "--no-hashes", "--no-editable"),
            *("--package", f"geozarr-{stage.value}", "--output-file", str(requirements)),
            "--quiet",
        ],
        cwd=repository,
        check=True,
        timeout=120,
    )
    venv = root / "venv"
    subprocess.run(
        ["uv", "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    subprocess.run(
        ["uv", "pip", "install", "--quiet", "--python", str(python), "-r", str(requirements)],
        cwd=repository,
        check=True,
        timeout=600,
    )
    return venv / "bin"
