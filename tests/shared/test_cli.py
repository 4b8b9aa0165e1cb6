"""The `geozarr-pipeline` command lists its subcommands without loading what they run."""

from __future__ import annotations

import json
import subprocess
import sys

# Loaded by the commands that need them (the functions, the AMQP bridge, the broker's manifests,
# the converter), never just to build the argument parser.
NOT_AT_START = ("flask", "pika", "yaml", "xarray", "zarr", "dask", "eopf_geozarr")

PROBE = """
import json, sys
from geozarr_pipeline.cli import build_parser
parser = build_parser()
commands = parser._subparsers._group_actions[0].choices
print(json.dumps({"loaded": sorted(m for m in sys.modules), "commands": sorted(commands)}))
"""


def test_parser_builds_without_heavy_imports() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    probe = json.loads(result.stdout)
    assert {"broker", "failures", "submit", "amqp-bridge"} <= set(probe["commands"])
    loaded = set(probe["loaded"])
    assert [name for name in NOT_AT_START if name in loaded] == []
