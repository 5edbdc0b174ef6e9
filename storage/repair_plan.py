"""What repair should do about one block: pure planning, no I/O.

Theory of operation
-------------------
The *placement rule* says where a block belongs: the ``n`` eligible members nearest to its
address (XOR distance in node-id space, as :meth:`dht.overlay.Overlay.closest_nodes`), where
*eligible* means neither evicted nor draining, and ``n`` is the block's target: ``r`` for a
chunk kept as ``r`` replicas, ``k + m`` for an erasure-coded chunk (fragments are
self-describing, so *which* node of the ``k + m`` holds which fragment does not matter, only
that they hold distinct ones), the size of its replica set for a register.

A holder of a block plans from what it learned in one *holdings* query (which of the target
nodes, of a window of further nodes, and of the draining members hold which keys of the
block). Every holder that sees the same holdings computes the same plan, and the plan gives
each piece of work to exactly one of them:

* **Replicas.** The *responsible* holder is the first holder in placement order (targets
  first, then the rest by distance). It copies its replica to every target that lacks one.
* **Fragments.** Each target should hold one fragment (or, when fewer than ``k + m`` members
  are eligible, the ``k + m`` fragments spread over them as evenly as possible, nearest
  first: a chunk keeps all its fragments even when it cannot have them on distinct nodes).
  Walking the targets in placement order, each *places* the lowest indexes it holds that no
  earlier target placed, up to its slots; whatever else a node holds is *extra* (a duplicate,
  or data off its placement). The free slots are paired, in placement order, with the
  indexes no target placed, in index order. A pair is served by the nearest node holding
  that index as an extra (a copy: it is moving misplaced data home) or, if none does,
  rebuilt by the responsible holder from any ``k`` fragments.
* **Release (copy-then-release).** A holder outside the targets drops its copy only once the
  targets hold it: for a replica, every target holds one (before the pass, or through this
  holder's own copies, which return only when durable); for a fragment held as an extra,
  some target has placed that index, or this holder's copy of it succeeded. So a repair
  never removes a copy before its replacement is durable.

Holdings that differ between holders (a node not answering, a write racing the query) at
worst duplicate a copy or postpone a release to the next pass; they never release a copy
that is still needed, because a release needs positive answers. Priority: a pass runs the
plans with the least redundancy left first (:attr:`BlockPlan.redundancy_left`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dht.ids import Contact, NodeId, distance, key_to_node_space

from .ids import BlockAddress

__all__ = [
    "BlockPlan",
    "Copy",
    "Rebuild",
    "by_distance",
    "plan_fragments",
    "plan_replicas",
    "targets",
]


def by_distance(key: bytes, contacts: Iterable[Contact]) -> list[Contact]:
    """``contacts`` ordered by XOR distance of their ids to ``key`` (mapped to node space)."""
    point = key_to_node_space(key)
    return sorted(contacts, key=lambda c: distance(point, c.node_id))


def targets(key: bytes, eligible: Iterable[Contact], n: int) -> list[Contact]:
    """The placement rule: the ``n`` eligible members nearest to ``key``, nearest first."""
    return by_distance(key, eligible)[: max(n, 0)]


@dataclass(frozen=True)
class Copy:
    """Send this node's key ``fragment`` (``None``: the whole replica) to ``target``."""

    target: Contact
    fragment: int | None


@dataclass(frozen=True)
class Rebuild:
    """Rebuild fragment ``fragment`` from ``sources`` (index → holder) and send it to ``target``."""

    target: Contact
    fragment: int
    sources: Mapping[int, Contact]


@dataclass(frozen=True)
class BlockPlan:
    """Work for one block on this node.

    Attributes:
        address: the block.
        copies: local keys to send to targets.
        rebuilds: fragments to rebuild and send (this node is the responsible holder).
        release: local keys to drop, each with the copies of this plan that must succeed
            first (empty: the targets already hold what replaces it).
        responsible: this node is the one that repairs the block (it counts it in the
            "under target" census, so each block is counted once cluster-wide).
        under_target: the targets do not yet hold the block at full redundancy.
        redundancy_left: how many more losses the block survives as held now (priority).
    """

    address: BlockAddress
    copies: tuple[Copy, ...] = ()
    rebuilds: tuple[Rebuild, ...] = ()
    release: Mapping[int | None, frozenset[Copy]] = field(default_factory=dict)
    responsible: bool = False
    under_target: bool = False
    redundancy_left: int = 0

    @property
    def idle(self) -> bool:
        """Whether the plan asks for nothing."""
        return not (self.copies or self.rebuilds or self.release)


def _placement_order(
    address: bytes, target_set: Sequence[Contact], others: Iterable[Contact]
) -> list[Contact]:
    ids = {c.node_id for c in target_set}
    rest = [c for c in others if c.node_id not in ids]
    return [*target_set, *by_distance(address, _unique(rest))]


def _unique(contacts: Iterable[Contact]) -> list[Contact]:
    seen: set[NodeId] = set()
    out = []
    for c in contacts:
        if c.node_id not in seen:
            seen.add(c.node_id)
            out.append(c)
    return out


def plan_replicas(
    address: BlockAddress,
    own: Contact,
    target_set: Sequence[Contact],
    holders: Mapping[NodeId, bool],
    others: Iterable[Contact] = (),
) -> BlockPlan:
    """Plan for a replicated chunk this node holds (see the module docstring).

    Args:
        address: the chunk.
        own: this node (it holds a replica).
        target_set: :func:`targets` for the chunk's replica count.
        holders: node id → holds a replica, for the nodes that answered (``own`` implied);
            a target that did not answer gets no copy and blocks the release.
        others: the further nodes that were asked (window, draining members).
    """
    held = dict(holders)
    held[own.node_id] = True
    order = _placement_order(address, target_set, [own, *others])
    responsible = next(c for c in order if held.get(c.node_id, False))
    missing = [t for t in target_set if not held.get(t.node_id, False)]
    mine = responsible.node_id == own.node_id
    # A target that did not answer is not sent anything (it may be down, or hold it).
    reachable = [t for t in missing if t.node_id in held]
    copies = tuple(Copy(t, None) for t in reachable) if mine else ()
    in_targets = any(t.node_id == own.node_id for t in target_set)
    release: dict[int | None, frozenset[Copy]] = {}
    if not in_targets and target_set and (not missing or (mine and reachable == missing)):
        release[None] = frozenset(copies)
    return BlockPlan(
        address=address,
        copies=copies,
        release=release,
        responsible=mine,
        under_target=bool(missing),
        redundancy_left=sum(1 for v in held.values() if v) - 1,
    )


def plan_fragments(
    address: BlockAddress,
    own: Contact,
    local: Iterable[int],
    data: int,
    parity: int,
    target_set: Sequence[Contact],
    holders: Mapping[NodeId, frozenset[int]],
    others: Iterable[Contact] = (),
) -> BlockPlan:
    """Plan for an erasure-coded chunk of which this node holds fragments ``local``.

    Args:
        address: the chunk.
        own: this node.
        local: the fragment indexes this node holds.
        data, parity: the chunk's geometry (from its manifest).
        target_set: :func:`targets` for ``data + parity``.
        holders: node id → fragment indexes held, for the nodes that answered (a target
            that did not answer gets nothing).
        others: the further nodes that were asked (window, draining members).
    """
    held = {node: frozenset(idx) for node, idx in holders.items()}
    held[own.node_id] = frozenset(local)
    total = data + parity
    order = _placement_order(address, target_set, [own, *others])
    target_ids = [t.node_id for t in target_set]
    # Walk the targets in placement order: each keeps, as *placed*, the lowest indexes it
    # holds that no earlier target keeps, up to its slots; the rest it holds are *extra*.
    placed: set[int] = set()
    free: list[Contact] = []  # a target once per free slot, in placement order
    extra: dict[NodeId, frozenset[int]] = {}
    for rank, target in enumerate(target_set):
        if target.node_id not in held:
            continue  # did not answer: neither sent anything nor counted
        slots = _slots(rank, len(target_set), total)
        keeps = sorted(held[target.node_id] - placed)[:slots]
        placed.update(keeps)
        extra[target.node_id] = held[target.node_id] - frozenset(keeps)
        free += [target] * (slots - len(keeps))
    for node, indexes in held.items():
        if node not in target_ids:
            extra[node] = indexes
    needed = sorted(set(range(total)) - placed)
    anywhere: set[int] = set()
    for indexes in held.values():
        anywhere |= indexes
    responsible = next((c for c in order if held.get(c.node_id)), own)
    mine = responsible.node_id == own.node_id
    copies: list[Copy] = []
    rebuilds: list[Rebuild] = []
    for index, target in zip(needed, free, strict=False):
        supplier = next((c for c in order if index in extra.get(c.node_id, ())), None)
        if supplier is not None:
            if supplier.node_id == own.node_id:
                copies.append(Copy(target, index))
        elif mine and len(anywhere) >= data:
            rebuilds.append(Rebuild(target, index, _sources(order, held, data)))
    release: dict[int | None, frozenset[Copy]] = {}
    for index in sorted(extra[own.node_id]):
        if index in placed:
            release[index] = frozenset()
        else:
            mine_to = [c for c in copies if c.fragment == index]
            if mine_to:
                release[index] = frozenset(mine_to)
    return BlockPlan(
        address=address,
        copies=tuple(copies),
        rebuilds=tuple(rebuilds),
        release=release,
        responsible=mine,
        under_target=len(placed) < total,
        redundancy_left=len(anywhere) - data,
    )


def _slots(rank: int, targets: int, total: int) -> int:
    """Fragments the ``rank``-th target should hold: one, or more when targets are few."""
    if targets == 0:
        return 0
    return total // targets + (1 if rank < total % targets else 0)


def _sources(
    order: Sequence[Contact], held: Mapping[NodeId, frozenset[int]], data: int
) -> dict[int, Contact]:
    """Pick ``data`` distinct fragments, nearest holders first (this node's own are local)."""
    chosen: dict[int, Contact] = {}
    for contact in order:
        for index in sorted(held.get(contact.node_id, ())):
            if index not in chosen:
                chosen[index] = contact
    # Prefer data fragments (cheapest to decode) among what is available.
    return dict(sorted(chosen.items())[: max(data, 0)]) if len(chosen) >= data else chosen
