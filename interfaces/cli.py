"""The ``ballast`` command line.

Every expected failure (a malformed credential file, a bad argument, a missing passport) is
reported as one clear error line and a non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import importlib.metadata
import logging
import string
from pathlib import Path

import click

from dht.errors import CredentialError
from dht.identity import (
    ROLES,
    NetworkDescriptor,
    NodeIdentity,
    Passport,
    load_identity,
    load_network,
    save_identity,
    save_network,
    save_passport,
)
from storage.errors import InvalidArgument
from storage.policy import Redundancy

logger = logging.getLogger("ballast.cli")

NODE_KEY_FILE = "node.key"
NODE_PUBLIC_KEY_FILE = "node.pub"
OWNER_KEY_FILE = "owner.key"


def _version() -> str:
    try:
        return importlib.metadata.version("ballast")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _fail(message: str) -> click.ClickException:
    """Build the one-line error every command reports for an expected failure."""
    logger.debug("command failed: %s", message)
    return click.ClickException(message)


def _redundancy_data(text: str) -> dict[str, int]:
    """Parse ``3`` or ``4+2`` into the plain policy a network descriptor carries."""
    try:
        policy = Redundancy.parse(text)
    except InvalidArgument as error:
        raise click.BadParameter(str(error)) from None
    if policy.replicas is not None:
        return {"replicas": policy.replicas}
    assert policy.data is not None
    assert policy.parity is not None
    return {"data": policy.data, "parity": policy.parity}


def _read_public_key(text: str) -> bytes:
    """Accept a node public key as 64 hex digits, or the path of a ``node.pub`` file."""
    candidate = text.strip()
    path = Path(candidate)
    if not (len(candidate) == 64 and all(c in string.hexdigits for c in candidate)):
        if not path.is_file():
            raise _fail(f"{text!r} is neither a 64-hex-digit public key nor a readable file")
        try:
            candidate = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise _fail(f"cannot read public key file {text!r}: {error}") from None
    try:
        key = bytes.fromhex(candidate)
    except ValueError:
        raise _fail(f"public key in {text!r} is not hexadecimal") from None
    if len(key) != 32:
        raise _fail(f"a node public key is 32 bytes (64 hex digits), got {len(key)} bytes")
    return key


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


@main.group()
def network() -> None:
    """Create and inspect networks."""


@network.command("create")
@click.argument("name")
@click.option(
    "--redundancy", default="3", show_default=True, help="replicas (3) or data+parity (4+2)"
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="where to write the owner key and the network file",
)
def network_create(name: str, redundancy: str, directory: Path) -> None:
    """Create network NAME: an owner key and a signed network descriptor."""
    policy = _redundancy_data(redundancy)
    owner_path = directory / OWNER_KEY_FILE
    network_path = directory / f"{name}.network"
    for path in (owner_path, network_path):
        if path.exists():
            raise _fail(f"{path} already exists; refusing to overwrite it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        owner = NodeIdentity.generate()
        descriptor = NetworkDescriptor.create(owner, name, policy)
        save_identity(owner_path, owner)
        save_network(network_path, descriptor)
    except CredentialError as error:
        raise _fail(str(error)) from None
    except OSError as error:
        raise _fail(f"cannot write to {directory}: {error.strerror}") from None
    click.echo(f"network {name!r} created (default redundancy {redundancy})")
    click.echo(f"  owner key:    {owner_path}   (keep it secret: it issues passports)")
    click.echo(f"  network file: {network_path}   (give it to every node)")


@network.command("show")
@click.argument("network_file", type=click.Path(dir_okay=False, path_type=Path))
def network_show(network_file: Path) -> None:
    """Verify and describe a network file."""
    try:
        descriptor = load_network(network_file)
    except CredentialError as error:
        raise _fail(str(error)) from None
    click.echo(f"network:     {descriptor.name}")
    click.echo(f"owner:       {descriptor.owner_public_key.hex()}")
    click.echo(f"redundancy:  {dict(descriptor.redundancy)}")
    click.echo(f"fingerprint: {descriptor.fingerprint.hex()}")


@main.group()
def node() -> None:
    """Set up and run a storage node."""


@node.command("init")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="the node's data directory",
)
def node_init(data_dir: Path) -> None:
    """Create the node's key pair (once) and print its public key for a passport."""
    key_path = data_dir / NODE_KEY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if key_path.exists():
            identity = load_identity(key_path)
            click.echo(f"node key already exists: {key_path}")
        else:
            identity = NodeIdentity.generate()
            save_identity(key_path, identity)
            click.echo(f"node key created: {key_path}")
        (data_dir / NODE_PUBLIC_KEY_FILE).write_text(identity.public_key.hex() + "\n")
    except CredentialError as error:
        raise _fail(str(error)) from None
    except OSError as error:
        raise _fail(f"cannot write to {data_dir}: {error.strerror}") from None
    click.echo(f"node id:    {identity.node_id.hex()}")
    click.echo(f"public key: {identity.public_key.hex()}")
    click.echo(f"next: ballast passport issue {data_dir / NODE_PUBLIC_KEY_FILE} --network ... ")


@main.group()
def passport() -> None:
    """Issue passports that let nodes join a network."""


@passport.command("issue")
@click.argument("node_key")
@click.option(
    "--network", "network_file", type=click.Path(dir_okay=False, path_type=Path), required=True
)
@click.option(
    "--owner-key", "owner_key", type=click.Path(dir_okay=False, path_type=Path), required=True
)
@click.option("--role", type=click.Choice(sorted(ROLES)), default="storage", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def passport_issue(
    node_key: str, network_file: Path, owner_key: Path, role: str, out: Path
) -> None:
    """Sign a passport for NODE_KEY (hex public key, or a node.pub file)."""
    public_key = _read_public_key(node_key)
    try:
        descriptor = load_network(network_file)
        owner = load_identity(owner_key)
        issued = Passport.issue(owner, descriptor, public_key, role)
        save_passport(out, issued)
    except CredentialError as error:
        raise _fail(str(error)) from None
    except OSError as error:
        raise _fail(f"cannot write passport {out}: {error.strerror}") from None
    click.echo(f"passport for node {issued.node_id.hex()} ({role}) in {descriptor.name!r}: {out}")


if __name__ == "__main__":
    main()
