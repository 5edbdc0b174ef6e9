"""The ``ballast`` command line.

Commands are added as the layers they drive land; each one validates its arguments and turns
every expected failure into one clear error line and a non-zero exit status.
"""

from __future__ import annotations

import importlib.metadata

import click


def _version() -> str:
    try:
        return importlib.metadata.version("ballast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="ballast")
def main() -> None:
    """Ballast: distributed storage with file, S3, block and Docker interfaces."""


@main.command("native-info")
def native_info() -> None:
    """Show which erasure-coding kernel this machine uses."""
    import native

    click.echo(f"erasure-coding kernel: {native.kernel_name()}")
    click.echo(f"available kernels: {', '.join(native.available_kernels())}")


if __name__ == "__main__":
    main()
