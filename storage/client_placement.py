"""Placement for clients that are not storage members: answers from a :class:`MemberView`.

A process that only *uses* the cluster (a gateway on another machine, a test) holds a
:class:`dht.member_view.MemberView` instead of an overlay; :class:`ViewPlacement` gives the
key-value client the same placement answers a member's :class:`OverlayPlacement` gives,
and the client itself is never a candidate (it is not in any member list).
"""

from __future__ import annotations

from dht.ids import Contact, NodeId
from dht.member_view import MemberView

__all__ = ["ViewPlacement"]


class ViewPlacement:
    """:class:`storage.placement.Placement` on a :class:`MemberView` (no I/O).

    ``closest`` counts alive and suspected members (not evicted ones), as
    :meth:`dht.overlay.Overlay.closest_nodes`; ``contact`` resolves any member still in the
    list, evicted ones included (see :class:`storage.placement.OverlayPlacement`).
    """

    def __init__(self, view: MemberView) -> None:
        """Answer from ``view``."""
        self._view = view

    def closest(self, key: bytes, n: int) -> list[Contact]:
        """Return the ``n`` non-evicted members nearest to ``key``, nearest first."""
        return self._view.closest_nodes(key, n)

    def contact(self, node_id: NodeId) -> Contact | None:
        """Return the contact of member ``node_id``, or None if the view lacks it."""
        return self._view.contact(node_id)
