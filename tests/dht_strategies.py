"""Hypothesis strategies and credential factories for the tests of ``dht``'s secure overlay."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from dht.identity import NetworkDescriptor, NodeIdentity, Passport

#: Fixed creation time so that descriptors made from seeds are byte-for-byte reproducible.
CREATED_AT = 1_700_000_000.0


@dataclass(frozen=True)
class Member:
    """A node's credentials in one network."""

    identity: NodeIdentity
    passport: Passport
    network: NetworkDescriptor


def make_network(
    name: str = "testnet", *, owner: NodeIdentity | None = None
) -> tuple[NodeIdentity, NetworkDescriptor]:
    """Return an owner key and the descriptor of a network it owns."""
    owner = owner or NodeIdentity.generate()
    return owner, NetworkDescriptor.create(owner, name, {"replicas": 3}, created_at=CREATED_AT)


def make_member(
    owner: NodeIdentity,
    network: NetworkDescriptor,
    *,
    role: str = "storage",
    identity: NodeIdentity | None = None,
) -> Member:
    """Return a new node (or ``identity``) with a passport for ``network``."""
    identity = identity or NodeIdentity.generate()
    return Member(identity, Passport.issue(owner, network, identity.public_key, role), network)


def seeded(n: int) -> NodeIdentity:
    """Return a deterministic identity (seed = 32 copies of byte ``n``)."""
    return NodeIdentity.from_seed(bytes([n]) * 32)


#: Arbitrary bytes, biased towards short inputs and a few interesting prefixes.
garbage = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=40).map(lambda b: b"\x00\x00\x00\x20" + b),
    st.binary(max_size=64).map(lambda b: b"\x00\x00\x00" + bytes([len(b)]) + b),
)

#: Ways to cut a byte string into consecutive chunks (as a network delivers it).
chunk_sizes = st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=50)

#: Messages as the RPC layer sends them.
messages = st.lists(st.binary(max_size=3000), min_size=1, max_size=8)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut ``data`` into chunks of the given sizes (cycled), the last one taking the rest."""
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos += size
        i += 1
    return chunks
