"""The operator commands' error boundary: a store, catalog or broker that fails is one
redacted line on stderr and exit 1, never a traceback with a credential in it."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable

from geozarr_pipeline.errors import PipelineError
from geozarr_pipeline.faults import s3_errors
from geozarr_pipeline.redaction import redact

Command = Callable[[argparse.Namespace], int]


def store_errors() -> tuple[type[Exception], ...]:
    """What the stores and services can raise: our error tree, I/O, and botocore's."""
    errors: list[type[Exception]] = [PipelineError, ValueError, OSError]
    with contextlib.suppress(ImportError):
        errors += s3_errors()
    return tuple(errors)


def say(name: str, message: object) -> None:
    print(f"{name}: {redact(str(message))}", file=sys.stderr)


def guarded(name: str, command: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except store_errors() as exc:
            say(name, exc)
            return 1

    return run
