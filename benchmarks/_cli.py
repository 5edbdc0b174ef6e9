"""Command line shared by the one-thread throughput benchmarks (checksums.py, erasure.py).

Both take ``--rounds`` (timed rounds, median reported), ``--mib`` (data size) and
``--cpu N | --no-pin``, and pin the process to one CPU (the last one by default) before
measuring, so a round is not split across cores.
"""

from __future__ import annotations

import argparse
import os


def build_parser(doc: str | None) -> argparse.ArgumentParser:
    """Return the parser of the shared options, described by the first paragraph of ``doc``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--mib", type=int, default=64, help="data size in MiB")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    return parser


def pin(cpu: int | None, no_pin: bool) -> str:
    """Pin this process to ``cpu`` (default: the last one allowed) unless ``no_pin``.

    Returns ``"pinned to CPU N"``, or ``"not pinned"`` when asked not to or when the platform
    cannot pin.
    """
    if no_pin or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    chosen = cpu if cpu is not None else max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {chosen})
    return f"pinned to CPU {chosen}"


def parse_and_pin(doc: str | None, argv: list[str] | None = None) -> tuple[argparse.Namespace, str]:
    """Parse ``argv`` (default: the command line), pin as asked; return (args, pinned text).

    ``args`` has ``rounds``, ``mib``, ``cpu`` and ``no_pin``; the text is the one of
    :func:`pin`. Exits with a usage error when ``--rounds`` or ``--mib`` is below 1.
    """
    parser = build_parser(doc)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.mib < 1:
        parser.error("--rounds and --mib must be >= 1")
    return args, pin(args.cpu, args.no_pin)
