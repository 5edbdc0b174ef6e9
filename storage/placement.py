"""Where blocks go: the nodes nearest to a block address in the overlay's node-id space.

Placement only *proposes* where a block lives (DESIGN.md, key-value layer): immutable chunks
go to the ``n`` members nearest to their address; a register's replica set is decided at its
creation from the same primitive and is afterwards part of its consensus state.
"""

from __future__ import annotations

from typing import Protocol

from dht.ids import Contact, NodeId
from dht.overlay import Overlay

__all__ = ["OverlayPlacement", "Placement"]


class Placement(Protocol):
    """The placement primitive the key-value client relies on."""

    def closest(self, key: bytes, n: int) -> list[Contact]:
        """Return the ``n`` closest live members to ``key`` (mapped with ``key_to_node_space``).

        Nearest first; fewer when the network has fewer members.
        """
        ...

    def contact(self, node_id: NodeId) -> Contact | None:
        """Return how to reach member ``node_id`` (a replica-set member), or None if unknown."""
        ...


class OverlayPlacement:
    """:class:`Placement` on a :class:`dht.overlay.Overlay`'s member list (no I/O).

    ``closest`` counts alive and suspected members (not evicted ones), exactly as
    :meth:`Overlay.closest_nodes`. ``contact`` resolves any member still in the list, evicted
    ones included: a register's replica set is consensus state, so its members are tried
    until consensus moves the register elsewhere.
    """

    def __init__(self, overlay: Overlay) -> None:
        """Answer from ``overlay``'s member list."""
        self._overlay = overlay

    def closest(self, key: bytes, n: int) -> list[Contact]:
        """Return the ``n`` non-evicted members nearest to ``key``, nearest first."""
        return self._overlay.closest_nodes(key, n)

    def contact(self, node_id: NodeId) -> Contact | None:
        """Return the contact of member ``node_id``, or None if the member list lacks it."""
        if node_id == self._overlay.own.node_id:
            return self._overlay.own
        member = self._overlay.membership.get(node_id)
        return None if member is None else member.contact
