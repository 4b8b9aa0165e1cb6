"""`geozarr-pipeline broker` and `python -m geozarr_local.broker`: run the local broker.

    python -m geozarr_local.broker --host 127.0.0.1 --port 8080 \\
        --manifests knative/base --state-dir data/broker \\
        --subscriber geozarr-convert=http://127.0.0.1:8081 ...
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from geozarr_local.broker.engine import LocalBroker
from geozarr_local.broker.routing import ManifestError, load_routes, parse_subscriber_options
from geozarr_pipeline.logs import configure_logging

log = logging.getLogger(__name__)

DESCRIPTION = "A local stand-in for the Knative RabbitMQ broker, routed by the Trigger manifests."


def default_manifests() -> Path:
    """The repository's `knative/base`, relative to the working directory (its root)."""
    return Path("knative", "base")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    parser.add_argument(
        "--manifests",
        type=Path,
        default=None,
        help="folder (or file) of Knative manifests; every Trigger in it is a route "
        "(default: <repo>/knative/base)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="where the journal (events.jsonl) and the delivery log (deliveries.jsonl) are kept; "
        "a restart on the same folder redelivers what was never acknowledged",
    )
    parser.add_argument(
        "--subscriber",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="local URL of a Trigger subscriber Service, e.g. "
        "geozarr-convert=http://127.0.0.1:8081 (repeatable; a Trigger's deadLetterSink "
        "Service must be named here too, or its dead letters are lost, as upstream)",
    )
    parser.add_argument(
        "--broker-name", default=None, help="only Triggers of this broker (default: all)"
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=1,
        help="concurrent deliveries per Trigger without the parallelism annotation (default 1, "
        "as eventing-rabbitmq)",
    )
    parser.add_argument(
        "--default-timeout",
        type=float,
        default=300.0,
        help="delivery timeout in seconds for Triggers without delivery.timeout (default 300)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=2.0,
        help="seconds in-flight deliveries get on SIGTERM; unfinished ones are redelivered on "
        "the next start (default 2)",
    )
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; exit code 2 for a bad manifest or option."""
    configure_logging(args.log_level)
    try:
        subscribers = parse_subscriber_options(args.subscriber)
        manifests = args.manifests or default_manifests()
        routes = load_routes(manifests, broker=args.broker_name)
    except (ManifestError, ValueError) as exc:
        log.error("cannot start the local broker", extra={"error": str(exc)})
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    broker = LocalBroker(
        routes,
        subscribers,
        args.state_dir,
        default_parallelism=args.parallelism,
        default_timeout=args.default_timeout,
    )
    try:
        url = broker.serve(args.host, args.port)
        log.info(
            "local broker ready",
            extra={
                "url": url,
                "manifests": str(manifests),
                "state_dir": str(args.state_dir),
                "triggers": [r.name for r in routes],
            },
        )
        stop.wait()
    finally:
        broker.close(grace=args.grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("local broker stopped")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "broker", help="run the local broker (routes by the Knative Trigger manifests)"
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m geozarr_local.broker", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
