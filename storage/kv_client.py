"""The networked key-value client: immutable chunks and CASPaxos registers over ``kv.*`` RPCs.

Theory of operation
-------------------
:class:`KVClient` implements :class:`storage.api.BlockStore` against the storage nodes'
:class:`storage.kv_service.BlockService`. Nothing leaves the client in plaintext.

Chunks (immutable, content-addressed)
    ``put_chunk`` seals the plaintext with a fresh key (a worker thread for large chunks).
    *Replicas* (``r``): the ciphertext goes to the ``r`` members nearest to its address, in
    parallel; a target that refuses (``no_space``) or cannot be reached is replaced by the
    next-nearest spare member. *Fragments* (``k+m``): the ciphertext is Reed-Solomon coded in
    a worker thread and fragment ``i`` goes to the ``i``-th nearest member (spares likewise).
    The call returns once a **write quorum** is durable on distinct nodes — replicas: a
    majority of ``r``; fragments: ``k+1`` — because a node answers ``kv.put`` only after its
    fsync. The remaining copies ("stragglers") keep going in the background, in
    :meth:`KVClient.run`'s nursery, up to full redundancy; what they cannot place is left to
    repair. Fewer than a quorum within the timeout raises ``Unavailable(needed, reached)``.

    ``get_chunk`` never returns bytes it has not verified. *Replicas*: it asks the nearest
    member (this node first when it is one of the holders: a local read costs no transfer
    and no transport encryption, and is verified all the same), hedges to the next when it
    is late (see "Hedging") or on any failure, and authenticates each answer by unsealing
    it (the Poly1305 tag under the chunk's own random key, which no holder knows, proves
    every byte); only an answer that does not open is hashed (``is_replica_of``) to tell a
    holder that served bad bytes — logged with the node id, counted (``corrupt_replies``),
    another holder is used — from a wrong key in the reference (``Corrupt``, no holder
    blamed). *Fragments*: it asks ``k``
    members at once (the nearest ones, which hold the data fragments, so decoding is cheap),
    hedges further members on slowness or failure, checks every manifest against the address
    and every fragment against the manifest, then decodes in a worker thread. Finally it
    unseals (authenticated encryption: a wrong key or altered ciphertext is ``Corrupt``).
    Fewer good answers than needed → ``Unavailable(needed, reached)``; every asked node saying
    "not here", and at least a write quorum of them → ``NotFound``.

    Hedging: a read asks one more holder when no answer came for :func:`hedge_delay` seconds:
    :data:`HEDGE_DELAY` plus twice the time the expected answer takes at the transfer rate
    measured on earlier large answers (a moving average), at most :data:`HEDGE_DELAY_MAX`.
    A fixed delay made under-load reads of 4 MiB chunks, which take longer than that to
    arrive from a healthy holder, fetch the same bytes two or three times over, and so slow
    every holder further; a stalled holder is still bypassed after at most the maximum.

Registers (mutable, linearizable)
    A register ``name`` lives at ``register_address(owner key, name)``. Each change is one
    CASPaxos round (:mod:`storage.paxos`) driven here: the round's messages go out in
    parallel (see "Messages" below), replies are fed back, follow-ups are sent, until an
    outcome. ``Preempted`` → randomized exponential back-off and a fresh round (bounded by the
    operation timeout and :data:`MAX_ROUNDS`); ``Refused`` → ``PermissionDenied``; no quorum
    before the deadline → the round's ``Unavailable``. A value is *decided* once a quorum of
    acceptors has it on disk (each acceptor fsyncs before answering), so an acknowledged change
    survives the loss of any minority and the restart of every node.

    The replica set is decided when a register is created: the ``R`` members nearest to the
    address, where ``R`` is the policy's replica count, or for an erasure-coded policy
    ``min(2m+1, k+m)`` (as many failures tolerated as the chunks written with that policy).
    Afterwards the set is part of the register's consensus state; the client remembers it per
    address (from decided values only) and starts its rounds there.

    Finding a register: the first round. A client that has seen no decided value of a
    register does not know its replica set, and its own member view may differ from the
    creator's (a member joined or was evicted since, or another gateway's list lags). So its
    rounds *probe* (:mod:`storage.paxos`, "Probing"): phase 1 goes to the ``R +``
    :data:`PROBE_SPARES` members nearest in its view and needs all of them but
    ``R - majority(R)`` (one of five for ``R = 3``), which meets every majority of every
    ``R``-subset of them. Any value found is followed (its configuration governs); only when
    none of those answers knows the register is it created, on the nearest ``R``. Two
    clients whose views differ by at most :data:`PROBE_SPARES` members near the address
    therefore never create two histories of one register; this is the assumption the
    placement of registers rests on (moves go to the nearest members, and a set moved away
    from keeps pointing at the new one). The cost is paid once per client and register: the
    first round needs one more answer than a majority. A round with a known set that finds
    no quorum forgets the set, so the next operation probes again (the set may have moved
    and been dropped).

    Reads. A client that knows the register's configuration first tries a *quick read*
    (:class:`storage.paxos.QuickRead`): it asks the acceptors for their state, which writes
    nothing, and returns as soon as a quorum of the value's configuration reports the same
    accepted ballot and value (linearizable: see :mod:`storage.paxos`, "Reads without
    writes"). Disagreeing or missing answers (a write in flight, a lagging or down member,
    an empty register) fall back, after at most :data:`QUICK_READ_WAIT` seconds, to a
    CASPaxos round of the identity change, which writes the value back.

    Moving registers (repair, rebalancing, drain) works by address, without the owner keys:
    :meth:`KVClient.move_register` runs ``BeginReplicaChange`` (joint configuration: every
    change needs a majority of the old *and* the new set) then ``FinishReplicaChange``, and
    :meth:`KVClient.sync_register` runs a read round that waits for every acceptor of the
    configuration to take the write-back. Replica sets are not covered by the owner's
    signature, so acceptors accept the moved values as they are.

    Messages. A round's messages are not sent one RPC each: every message for one node
    goes into that node's *outbox*, and a flush task sends what the outbox holds, after
    one pass of the scheduler, as one ``kv.paxos_batch`` call (a lone message as
    ``kv.paxos``); each reply is verified and handed back to its round. So the operations
    in flight at once (a gateway's concurrent requests, say) share RPCs, and their state
    writes share each acceptor's group commit. Quick-read inspections have outboxes of
    their own, so that they never wait for another round's fsync. An identical accept for
    several acceptors is encoded once, identical replies are decoded once, and unsealed
    envelopes of recent payloads are kept, so that an edit or a read of a value this
    client already holds unseals nothing.

    Payloads are sealed with ``keys.data_key`` inside an envelope
    ``[2, plaintext, since, [[writer id, op id], ...]]`` and every value is signed by
    ``keys.signing`` (writer ``[owner key, name]``), so acceptors see neither the plaintext
    nor can they forge a value. A reader verifies the signature of every value an acceptor
    reports (a forged one is counted and that reply ignored).

    Exactly-once changes. A round that was preempted may still have had its value accepted
    by a minority, and a later proposer may adopt it, so a blind retry could apply an edit
    (an increment, say) twice. The envelope therefore records, for each of the last
    :data:`MAX_WRITERS` clients that wrote the register, the id of its last change (each
    client has one change in flight per register at a time), and ``since``, the first
    version after the last tombstone. Before applying its change again, a retry looks at
    the current value: its own id there means an earlier attempt was adopted (the call
    returns that outcome); otherwise no attempt was, unless a tombstone came after the
    version an attempt proposed or the client's entry may have been pushed out, in which
    case the outcome is unknown and the call raises ``Unavailable`` rather than risk
    applying the change twice (a change that would write nothing proceeds). An attempt whose
    ``Accept`` every acceptor rejected can never be chosen and is forgotten (a preempted
    round waits up to :data:`_LATE_REPLY_GRACE` seconds for its last replies). Once a round
    of the call is decided, no older attempt can ever be adopted (CASPaxos invariant 4).

Timeouts and cancellation
    Every operation is bounded by the client's ``timeout``. Cancelling a chunk write before
    its quorum cancels its remaining copies (the chunk may or may not be stored); cancelling a
    register change leaves it applied or not, exactly as a lost reply would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from typing import Any, Literal, TypeVar

import msgpack
import trio

from dht.contracts import RemoteCaller
from dht.errors import RemoteError, RpcError
from dht.ids import Contact, NodeId

from .api import ChunkRef, Edit, Versioned
from .chunks import (
    SEAL_OVERHEAD,
    Manifest,
    chunk_address,
    decode_verified_fragments,
    encode_fragments,
    is_replica_of,
    seal,
    unseal,
    verify_fragment,
    verify_manifest,
)
from .errors import (
    Conflict,
    Corrupt,
    InvalidArgument,
    NoSpace,
    NotFound,
    PermissionDenied,
    StorageError,
    Unavailable,
)
from .ids import BlockAddress
from .paxos import (
    AbortReplicaChange,
    Accept,
    Accepted,
    Ballot,
    BeginReplicaChange,
    Change,
    Decided,
    FinishReplicaChange,
    Inspect,
    Message,
    Outcome,
    Preempted,
    Promise,
    Proposer,
    QuickRead,
    Read,
    Refused,
    RegisterValue,
    Reject,
    Report,
    Request,
    Round,
    Send,
    Transition,
    decode_message,
    encode_message,
    higher_ballot,
)
from .placement import Placement
from .policy import MAX_REPLICAS, Redundancy, majority
from .registers import (
    ClientKeys,
    open_payload,
    register_address,
    seal_payload,
    sign_register_value,
    verify_register_value,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BACKOFF_CAP",
    "HEDGE_DELAY",
    "HEDGE_DELAY_MAX",
    "MAX_ROUNDS",
    "MAX_WRITERS",
    "PROBE_SPARES",
    "QUICK_READ_WAIT",
    "SPARES",
    "KVClient",
    "KVClientStatistics",
    "hedge_delay",
    "register_replicas",
]

#: Seconds a read waits for a small answer before also asking the next holder (larger
#: answers add their expected transfer time, see :func:`hedge_delay`).
HEDGE_DELAY = 0.075
#: Longest a read waits for an answer before also asking the next holder (a holder this late
#: is treated as stalled, however large the answer).
HEDGE_DELAY_MAX = 0.5
#: Seconds per byte assumed for transfers until some are measured (50 MB/s).
_HEDGE_SECONDS_PER_BYTE = 1 / 50e6
#: Answers at least this large are timed to estimate the transfer rate.
_HEDGE_SAMPLE_BYTES = 256 * 1024
#: Weight of the newest sample in the moving average of seconds per byte.
_HEDGE_SMOOTHING = 0.2
#: Extra members beyond the redundancy that writes may fall back to and reads may ask.
SPARES = 3
#: Members beyond a register's replica count that a client's first round on it also asks
#: (how far two member views may differ near an address; see the module docstring).
PROBE_SPARES = 2
#: Seconds a quick read waits for agreeing acceptors before running a full round.
QUICK_READ_WAIT = 0.5
#: Payloads at least this large are sealed, hashed and coded in worker threads.
THREAD_BYTES = 64 * 1024
#: Most CASPaxos rounds one register operation runs (each preemption costs one).
MAX_ROUNDS = 1000
#: Writers whose last change id a register's envelope keeps (see the module docstring).
MAX_WRITERS = 64
#: Registers whose proposer (ballot counter, one-round-trip cache) is kept.
PROPOSER_CACHE = 4096
_BACKOFF_BASE = 0.004
#: Longest randomized back-off after a preempted round (seconds).
BACKOFF_CAP = 0.25
_ENVELOPE_VERSION = 2
#: How long a preempted round still waits for its last replies (see ``_drive``).
_LATE_REPLY_GRACE = 1.0
_OP_ID_BYTES = 8
#: Unsealed register envelopes kept, and the largest sealed payload kept.
_ENVELOPE_CACHE = 1024
_ENVELOPE_CACHE_MAX_BYTES = 64 * 1024
#: Most aborts of a competing move one move_register call makes before it gives up.
_MOVE_STEPS = 4

_CODES: dict[str, type[StorageError]] = {
    "not_found": NotFound,
    "corrupt": Corrupt,
    "no_space": NoSpace,
    "invalid": InvalidArgument,
    "forbidden": PermissionDenied,
}

T = TypeVar("T")
_Progress = Literal["done", "progress", "useless"]


def hedge_delay(base: float, size: int, seconds_per_byte: float) -> float:
    """Seconds to wait for an answer of ``size`` bytes before asking another holder too.

    ``base`` (the delay for a small answer) plus twice the expected transfer time, capped at
    :data:`HEDGE_DELAY_MAX` (but never below ``base``).
    """
    return max(base, min(base + 2.0 * size * seconds_per_byte, HEDGE_DELAY_MAX))


def register_replicas(redundancy: Redundancy) -> int:
    """Return how many acceptors hold a register created under ``redundancy``.

    Registers are always replicated: ``r`` for ``Redundancy(replicas=r)``; for
    ``Redundancy(data=k, parity=m)``, ``min(2m+1, k+m)`` (capped at 16), so that a register
    survives as many lost nodes as the chunks written with the same policy.
    """
    if redundancy.replicas is not None:
        return redundancy.replicas
    assert redundancy.data is not None
    assert redundancy.parity is not None
    return min(2 * redundancy.parity + 1, redundancy.data + redundancy.parity, MAX_REPLICAS)


def _storage_error(exc: RemoteError) -> StorageError:
    kind = _CODES.get(exc.code)
    if kind is None:
        return Unavailable(1, 0, f"remote error {exc.code}: {exc.message}")
    return kind(exc.message or exc.code)


@dataclass(frozen=True)
class KVClientStatistics:
    """Counters of a :class:`KVClient`.

    Attributes:
        chunks_put / chunks_got: chunk writes and reads that succeeded.
        bytes_put / bytes_got: plaintext bytes of those.
        copies_stored: replicas or fragments acknowledged durable by a node.
        spare_placements: copies placed on a spare node after a target refused or failed.
        stragglers_completed: copies made durable after the write had returned.
        copies_failed: copies that found no node to take them (left to repair).
        hedged_requests: read requests sent beyond the minimum needed.
        corrupt_replies: answers whose bytes failed verification (altered or damaged).
        damaged_copies: holders that reported their own stored copy corrupt (not served).
        forged_values: register values reported by an acceptor with a bad signature.
        register_ops: register operations that completed (read, edit, CAS, delete).
        paxos_rounds: CASPaxos rounds started.
        consensus_messages: consensus messages sent to acceptors.
        consensus_calls: RPCs that carried them (several messages share one when many
            operations are in flight).
        probes: CASPaxos rounds that probed (the client knew no configuration).
        quick_reads: reads answered without a round (acceptors agreed; nothing written).
        quick_read_fallbacks: quick reads that could not conclude (a full round followed).
        registers_moved: replica-set moves completed by :meth:`KVClient.move_register`.
        unsynced_acceptors: acceptors a :meth:`KVClient.sync_register` could not update.
        preemptions: rounds that lost to a higher ballot and were retried.
        replays_avoided: retries that found their preempted change chosen after all (and
            so did not apply it twice).
        unavailable: operations that failed with ``Unavailable``.
        background_tasks: straggler tasks running now.
    """

    chunks_put: int
    chunks_got: int
    bytes_put: int
    bytes_got: int
    copies_stored: int
    spare_placements: int
    stragglers_completed: int
    copies_failed: int
    hedged_requests: int
    corrupt_replies: int
    damaged_copies: int
    forged_values: int
    register_ops: int
    paxos_rounds: int
    consensus_messages: int
    consensus_calls: int
    probes: int
    quick_reads: int
    quick_read_fallbacks: int
    registers_moved: int
    unsynced_acceptors: int
    preemptions: int
    replays_avoided: int
    unavailable: int
    background_tasks: int


@dataclass
class _Counters:
    chunks_put: int = 0
    chunks_got: int = 0
    bytes_put: int = 0
    bytes_got: int = 0
    copies_stored: int = 0
    spare_placements: int = 0
    stragglers_completed: int = 0
    copies_failed: int = 0
    hedged_requests: int = 0
    corrupt_replies: int = 0
    damaged_copies: int = 0
    forged_values: int = 0
    register_ops: int = 0
    paxos_rounds: int = 0
    consensus_messages: int = 0
    consensus_calls: int = 0
    probes: int = 0
    quick_reads: int = 0
    quick_read_fallbacks: int = 0
    registers_moved: int = 0
    unsynced_acceptors: int = 0
    preemptions: int = 0
    replays_avoided: int = 0
    unavailable: int = 0
    background_tasks: int = 0


# --- chunk writes ---------------------------------------------------------------------------


@dataclass
class _Copy:
    """One replica or fragment to place."""

    payload: bytes | bytearray | memoryview  # never written to: sent from this buffer
    fragment: int | None = None
    manifest: bytes | None = None


def _prepare_copies(
    plaintext: bytes | memoryview, policy: Redundancy
) -> tuple[BlockAddress, bytes, list[_Copy]]:
    """Seal ``plaintext`` and make the copies ``policy`` stores: (address, key, copies)."""
    sealed = seal(plaintext)
    if policy.is_erasure_coded:
        assert policy.data is not None
        assert policy.parity is not None
        encoded = encode_fragments(sealed.ciphertext, policy.data, policy.parity)
        manifest = encoded.manifest.to_bytes()
        copies = [
            _Copy(fragment, index, manifest) for index, fragment in enumerate(encoded.fragments)
        ]
        return encoded.address, sealed.key, copies
    # Immutable from here: a call to this node hands ``bytes`` over without copying them on
    # the event loop (see ``dht.rpc._local_copy``). This copy runs in the worker thread, also
    # when this node turns out not to be a holder (placement is known only on the loop): a
    # copy off the loop costs less than one on it.
    ciphertext = bytes(sealed.ciphertext)
    address = chunk_address(ciphertext)
    return address, sealed.key, [_Copy(ciphertext) for _ in range(policy.nodes_needed)]


@dataclass
class _PutJob:
    """The fan-out of one chunk write (runs in the client's nursery)."""

    address: BlockAddress
    needed: int
    total: int
    spares: deque[Contact]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    settled: trio.Event = field(default_factory=trio.Event)
    stored: list[NodeId] = field(default_factory=list)
    failed: int = 0
    returned: bool = False

    def check(self) -> None:
        # Once the quorum is out of reach, still let the copies in flight finish, so that
        # ``Unavailable.reached`` says how many are durable.
        if len(self.stored) >= self.needed or len(self.stored) + self.failed >= self.total:
            self.settled.set()


# --- register changes -----------------------------------------------------------------------


@dataclass
class _Register:
    """What the client keeps per register address: proposer, lock and known replica set."""

    proposer: Proposer
    lock: trio.Lock = field(default_factory=trio.Lock)
    replicas: tuple[NodeId, ...] | None = None
    #: The last value whose signature this client checked (or made): not checked again.
    verified: RegisterValue | None = None
    #: The last reply carrying a value, raw and decoded: acceptors in step send the same.
    last_reply: tuple[bytes, Message] | None = None


@dataclass
class _Posted:
    """A consensus message waiting in an outbox, and where its reply goes."""

    address: BlockAddress
    entry: _Register
    message: bytes
    deadline: float
    deliver: Callable[[Message | None], None]


@dataclass
class _Outbox:
    """Consensus messages for one acceptor node, sent together by the next flush."""

    node: NodeId
    items: list[_Posted] = field(default_factory=list)


@dataclass(frozen=True)
class _Envelope:
    """What a register payload holds once unsealed (see the module docstring)."""

    plaintext: bytes
    #: The first version of the current life of the register (after its last tombstone).
    since: int
    #: ``(writer id, id of that writer's last change)``, least recently written first.
    writers: tuple[tuple[bytes, bytes], ...]

    def last_op(self, writer: bytes) -> bytes | None:
        """Return the id of ``writer``'s last change recorded here, if any."""
        for who, op in self.writers:
            if who == writer:
                return op
        return None


class _Mutation:
    """A CASPaxos change computed on plaintext, signed, sealed and applied at most once.

    ``compute(current)`` receives the current plaintext (``None``: absent or deleted) and
    its version, and returns ``(new plaintext | None, conflict)``. See the module docstring
    for how retries avoid applying the change twice.
    """

    def __init__(
        self,
        client: KVClient,
        name: bytes,
        compute: Callable[[Versioned | None], tuple[bytes | None, bool]],
    ) -> None:
        self._client = client
        self._name = name
        self._compute = compute
        self._op = os.urandom(_OP_ID_BYTES)
        self._proposed: list[int] = []  # versions earlier attempts proposed
        self.already_applied = False

    @property
    def attempts(self) -> int:
        """How many values this change has proposed so far."""
        return len(self._proposed)

    def attempts_failed(self, since: int) -> None:
        """Forget the values proposed after the first ``since``: no acceptor accepted them."""
        del self._proposed[since:]

    def _maybe_applied(self, current: RegisterValue, envelope: _Envelope | None) -> bool:
        """Whether an earlier attempt may be in ``current``'s history without showing."""
        for version in self._proposed:
            if version > current.version:
                continue  # the register has not reached that version: not chosen (yet)
            if envelope is None or version < envelope.since:
                return True  # a tombstone came since and erased the writers' record
            if (
                len(envelope.writers) >= MAX_WRITERS
                and envelope.last_op(self._client._writer_id) is None
            ):
                return True  # our entry may have been pushed out
        return False

    def apply(self, current: RegisterValue | None, replicas: tuple[NodeId, ...]) -> Transition:
        """Return the transition from ``current`` (see :class:`storage.paxos.Change`)."""
        self.already_applied = False
        client = self._client
        envelope = None if current is None else client._open(current)
        if envelope is not None and envelope.last_op(client._writer_id) == self._op:
            # An earlier round of this very call was chosen after all: do not apply it twice.
            self.already_applied = True
            client._n.replays_avoided += 1
            return Transition(current)
        plain = (
            None
            if current is None or envelope is None
            else Versioned(envelope.plaintext, current.version)
        )
        new_plain, conflict = self._compute(plain)
        unchanged = (new_plain is None and plain is None) or (
            plain is not None and new_plain == plain.value
        )
        if unchanged and not conflict:
            return Transition(current)  # nothing to write, whatever an earlier attempt did
        if current is not None and self._maybe_applied(current, envelope):
            client._n.unavailable += 1
            logger.warning(
                "kv: register %r: an earlier attempt (version %s) may have been chosen and "
                "version %d cannot tell",
                self._name,
                self._proposed,
                current.version,
            )
            raise Unavailable(1, 0, "an earlier attempt of this change may have been applied")
        if conflict:
            return Transition(current, conflict=True)
        version = 1 if current is None else current.version + 1
        payload = None
        if new_plain is not None:
            writers = () if envelope is None else envelope.writers
            mine = (client._writer_id, self._op)
            kept = tuple(w for w in writers if w[0] != client._writer_id)
            sealed = _Envelope(
                plaintext=new_plain,
                since=version if envelope is None else envelope.since,
                writers=(*kept, mine)[-MAX_WRITERS:],
            )
            payload = client._seal(sealed)
            client._remember(payload, sealed)
        if current is None:
            value = RegisterValue(version=version, replica_set=replicas, payload=payload)
        else:
            value = dataclass_replace(current, version=version, payload=payload)
        self._proposed.append(version)
        return Transition(sign_register_value(client._keys.signing, self._name, value))


def _open_replica(payload: bytes, address: BlockAddress, key: bytes) -> bytes | Corrupt | None:
    """Unseal a replica, telling a bad holder from a bad reference (one worker-thread job).

    A replica that opens under ``key`` is authentic: the Poly1305 tag binds the nonce and
    every ciphertext byte to the chunk's own random key, which only the referencing metadata
    holds, so no holder can forge one. Hashing it against ``address`` as well would only
    repeat that proof (and cost as much CPU as the unsealing), so the address is checked
    only when the replica does not open, to tell who is at fault.

    Returns:
        The plaintext; ``None`` if the bytes do not hash to ``address`` (the holder served
        bad bytes); the :class:`Corrupt` error if bytes that do hash to ``address`` do not
        open under ``key`` (the reference is wrong: returned, so the caller does not blame
        the holder).
    """
    try:
        return unseal(payload, key)
    except Corrupt as exc:
        if not is_replica_of(address, payload):
            return None
        return exc


class KVClient:
    """The cluster as a :class:`storage.api.BlockStore` (see the module docstring).

    Args:
        caller: the RPC used to reach storage nodes (the node's ``RpcNode``).
        placement: where blocks go (``OverlayPlacement`` on the node's overlay).
        keys: the owner keys of the registers this client reads and writes.
        default_redundancy: the policy used when a call gives none.
        timeout: seconds any one operation may take before ``Unavailable``.
        proposer_id: this client's unique CASPaxos proposer id; default: the caller's node
            id (if it has one) followed by a random boot nonce.

    Start it with ``await nursery.start(client.run)``; operations need it running.
    """

    def __init__(
        self,
        caller: RemoteCaller,
        placement: Placement,
        *,
        keys: ClientKeys,
        default_redundancy: Redundancy,
        timeout: float = 10.0,
        proposer_id: bytes | None = None,
        hedge_delay: float = HEDGE_DELAY,
    ) -> None:
        """Configure the client; nothing happens until :meth:`run`."""
        if not timeout > 0:
            raise InvalidArgument("timeout must be positive")
        self._caller = caller
        self._placement = placement
        self._keys = keys
        self._default = default_redundancy
        self._timeout = timeout
        self._hedge_delay = hedge_delay
        #: Moving average of the seconds per byte of large chunk answers (for hedging).
        self._seconds_per_byte = _HEDGE_SECONDS_PER_BYTE
        if proposer_id is None:
            node_id = getattr(caller, "node_id", b"")
            proposer_id = (node_id if isinstance(node_id, bytes) else b"") + os.urandom(8)
        self._proposer_id = proposer_id
        #: Identifies this client's changes in register envelopes (one change in flight per
        #: register at a time: the per-register lock).
        self._writer_id = os.urandom(_OP_ID_BYTES)
        self._nursery: trio.Nursery | None = None
        self._stopped = False  # run() ran and ended: operations are Unavailable
        self._cpu = trio.CapacityLimiter(2)
        self._registers: OrderedDict[BlockAddress, _Register] = OrderedDict()
        #: The highest promise any acceptor refused us with: fresh proposers start above it
        #: (acceptors keep a node-wide promise floor once tombstones were collected, and a
        #: first round below it would only be preempted).
        self._ballot_floor: Ballot | None = None
        self._outboxes: dict[tuple[NodeId, bool], _Outbox] = {}
        #: Unsealed envelopes of recently seen payloads (keyed by the sealed bytes).
        self._envelopes: OrderedDict[bytes, _Envelope] = OrderedDict()
        self._rng = random.Random()
        self._n = _Counters()

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background work (straggler copies) until cancelled.

        Operations work only while this runs. Cancellation abandons the background work:
        copies not yet durable are left to repair.
        """
        if self._nursery is not None:
            raise RuntimeError("KVClient.run() is already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._stopped = False
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                # Closed to new work from here on (a task of the same shutdown that has not
                # seen its cancellation yet gets Unavailable, not a closed nursery).
                self._nursery = None
                self._stopped = True

    def statistics(self) -> KVClientStatistics:
        """Return a snapshot of the counters."""
        n = self._n
        return KVClientStatistics(
            chunks_put=n.chunks_put,
            chunks_got=n.chunks_got,
            bytes_put=n.bytes_put,
            bytes_got=n.bytes_got,
            copies_stored=n.copies_stored,
            spare_placements=n.spare_placements,
            stragglers_completed=n.stragglers_completed,
            copies_failed=n.copies_failed,
            hedged_requests=n.hedged_requests,
            corrupt_replies=n.corrupt_replies,
            damaged_copies=n.damaged_copies,
            forged_values=n.forged_values,
            register_ops=n.register_ops,
            paxos_rounds=n.paxos_rounds,
            consensus_messages=n.consensus_messages,
            consensus_calls=n.consensus_calls,
            probes=n.probes,
            quick_reads=n.quick_reads,
            quick_read_fallbacks=n.quick_read_fallbacks,
            registers_moved=n.registers_moved,
            unsynced_acceptors=n.unsynced_acceptors,
            preemptions=n.preemptions,
            replays_avoided=n.replays_avoided,
            unavailable=n.unavailable,
            background_tasks=n.background_tasks,
        )

    def _running(self) -> trio.Nursery:
        if self._nursery is None:
            if self._stopped:
                raise Unavailable(0, 0, "the key-value client has stopped")
            raise RuntimeError("KVClient.run() is not running")
        return self._nursery

    async def _in_thread(self, big: bool, fn: Callable[..., T], *args: Any) -> T:
        if big:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._cpu)
        return fn(*args)

    # -- chunks: writes -------------------------------------------------------------------

    async def put_chunk(
        self, plaintext: bytes | memoryview, *, redundancy: Redundancy | None = None
    ) -> ChunkRef:
        """Seal and store an immutable chunk; return once a write quorum has it durably.

        Raises:
            Unavailable: fewer than the write quorum stored it within the timeout.

        Cancellation: the chunk may or may not be stored; copies not yet durable are
        abandoned.
        """
        policy = redundancy or self._default
        nursery = self._running()
        size = memoryview(plaintext).nbytes
        # One worker-thread job seals and codes (or hashes): each hand-off costs a wake-up.
        address, key, copies = await self._in_thread(
            size >= THREAD_BYTES, _prepare_copies, plaintext, policy
        )
        await self._store(nursery, address, copies, policy)
        self._n.chunks_put += 1
        self._n.bytes_put += size
        return ChunkRef(address=address, key=key, size=size, redundancy=policy)

    async def _store(
        self, nursery: trio.Nursery, address: BlockAddress, copies: list[_Copy], policy: Redundancy
    ) -> None:
        total = len(copies)
        candidates = self._placement.closest(address, total + SPARES)
        job = _PutJob(
            address=address,
            needed=policy.write_quorum,
            total=total,
            spares=deque(candidates[total:]),
        )
        targets: list[Contact | None] = list(candidates[:total])
        targets += [None] * (total - len(targets))
        nursery.start_soon(self._put_job, job, copies, targets)
        try:
            with trio.move_on_after(self._timeout):
                await job.settled.wait()
            if len(job.stored) < job.needed:
                self._n.unavailable += 1
                logger.warning(
                    "kv: chunk %s not stored: quorum %d of %d, durable on %d (%s), policy %s",
                    address.hex()[:16],
                    job.needed,
                    total,
                    len(job.stored),
                    ", ".join(n.hex()[:8] for n in job.stored) or "none",
                    policy,
                )
                raise Unavailable(job.needed, len(job.stored))
            job.returned = True
        finally:
            if not job.returned:
                job.scope.cancel()

    async def _put_job(
        self, job: _PutJob, copies: list[_Copy], targets: list[Contact | None]
    ) -> None:
        self._n.background_tasks += 1
        try:
            with job.scope:
                async with trio.open_nursery() as nursery:
                    for copy, target in zip(copies, targets, strict=True):
                        nursery.start_soon(self._put_copy, job, copy, target)
        finally:
            self._n.background_tasks -= 1
        if len(job.stored) < job.total and job.returned:
            logger.warning(
                "kv: chunk %s durable on %d of %d nodes only; repair must fill the rest",
                job.address.hex()[:16],
                len(job.stored),
                job.total,
            )

    async def _put_copy(self, job: _PutJob, copy: _Copy, target: Contact | None) -> None:
        args: dict[str, Any] = {"address": job.address, "payload": copy.payload}
        if copy.fragment is not None:
            args["fragment"] = copy.fragment
            args["manifest"] = copy.manifest
        else:
            args["replicas"] = job.total  # the target count, kept by holders for repair
        spare = False
        while True:
            if target is None or target.node_id in job.stored:
                if not job.spares:
                    break
                target = job.spares.popleft()
                spare = True
                continue
            try:
                await self._caller.call(target, "kv.put", args, timeout=self._timeout)
            except (RpcError, RemoteError) as exc:
                logger.info(
                    "kv: %s of chunk %s refused by %s: %s; trying a spare",
                    "replica" if copy.fragment is None else f"fragment {copy.fragment}",
                    job.address.hex()[:16],
                    target.node_id.hex()[:8],
                    exc,
                )
                target = None
                continue
            job.stored.append(target.node_id)
            self._n.copies_stored += 1
            self._n.spare_placements += spare
            self._n.stragglers_completed += job.returned
            job.check()
            return
        job.failed += 1
        self._n.copies_failed += 1
        job.check()

    # -- chunks: reads --------------------------------------------------------------------

    async def get_chunk(self, ref: ChunkRef) -> bytes:
        """Read, verify and decrypt a chunk.

        Raises:
            NotFound: no node holds it.
            Unavailable: too few verified copies or fragments could be fetched in time.
            Corrupt: the verified ciphertext does not decrypt under ``ref.key``.

        Cancellation: harmless (requests in flight are abandoned).
        """
        self._running()
        policy = ref.redundancy
        stored = ref.size + SEAL_OVERHEAD  # bytes of ciphertext, if ``ref`` is right
        if policy.is_erasure_coded:
            ciphertext = await self._get_fragments(ref.address, policy, stored)
            plaintext = await self._in_thread(ref.size >= THREAD_BYTES, unseal, ciphertext, ref.key)
        else:
            plaintext = await self._get_replica(ref.address, policy, stored, ref.key)
        if len(plaintext) != ref.size:
            raise Corrupt(
                f"chunk {ref.address.hex()[:16]} has {len(plaintext)} bytes, not {ref.size}"
            )
        self._n.chunks_got += 1
        self._n.bytes_got += ref.size
        return plaintext

    def _remote_error(
        self, contact: Contact, address: BlockAddress, exc: RemoteError
    ) -> StorageError:
        error = _storage_error(exc)
        if isinstance(error, Corrupt):
            self._n.damaged_copies += 1
            logger.warning(
                "kv: node %s reports its copy of %s damaged: %s",
                contact.node_id.hex(),
                address.hex()[:16],
                exc.message,
            )
        return error

    def _report_corrupt(self, contact: Contact, what: str, exc: Exception) -> None:
        self._n.corrupt_replies += 1
        logger.error(
            "kv: node %s at %s served a bad %s: %s",
            contact.node_id.hex(),
            contact.address,
            what,
            exc,
        )

    async def _hedged(
        self,
        candidates: list[Contact],
        initial: int,
        fetch: Callable[[int, Contact], Awaitable[T]],
        accept: Callable[[T], _Progress],
        size: int,
    ) -> tuple[bool, int, int]:
        """Ask ``initial`` candidates at once; hedge on delay or failure until ``accept`` is done.

        ``accept`` judges each verified answer: ``"done"`` (enough now), ``"progress"`` (one
        more useful answer) or ``"useless"`` (a duplicate: ask another candidate). ``size``
        is the expected bytes of one answer: it sets the hedge delay (:func:`hedge_delay`),
        and large answers are timed to update the transfer rate the delay assumes.
        Returns (done, not-found answers, other failures).
        """
        results: trio.MemorySendChannel[tuple[T | None, Exception | None]]
        results, receive = trio.open_memory_channel(math.inf)
        position = outstanding = not_found = failures = 0
        done = False
        delay = hedge_delay(self._hedge_delay, size, self._seconds_per_byte)

        async def one(index: int, contact: Contact) -> None:
            began = trio.current_time()
            try:
                value = await fetch(index, contact)
            except (StorageError, RpcError) as exc:
                results.send_nowait((None, exc))
            else:
                if size >= _HEDGE_SAMPLE_BYTES:
                    sample = (trio.current_time() - began) / size
                    self._seconds_per_byte += _HEDGE_SMOOTHING * (sample - self._seconds_per_byte)
                results.send_nowait((value, None))

        async with trio.open_nursery() as nursery:

            def launch() -> bool:
                nonlocal position, outstanding
                if position >= len(candidates):
                    return False
                nursery.start_soon(one, position, candidates[position])
                position += 1
                outstanding += 1
                return True

            for _ in range(initial):
                launch()
            while outstanding:
                with trio.move_on_after(delay) as waited:
                    value, error = await receive.receive()
                if waited.cancelled_caught:
                    if launch():
                        self._n.hedged_requests += 1
                    continue
                outstanding -= 1
                if error is None:
                    assert value is not None
                    verdict = accept(value)
                    if verdict == "done":
                        done = True
                        break
                    if verdict == "useless":
                        launch()
                    continue
                if isinstance(error, NotFound):
                    not_found += 1
                else:
                    failures += 1
                if launch():
                    self._n.hedged_requests += 1
            nursery.cancel_scope.cancel()
        return done, not_found, failures

    def _local_first(self, candidates: list[Contact], holders: int) -> list[Contact]:
        """``candidates`` with this node first if it is among the ``holders`` nearest."""
        own = getattr(self._caller, "node_id", None)
        for i, contact in enumerate(candidates[:holders]):
            if contact.node_id == own:
                return [contact, *candidates[:i], *candidates[i + 1 :]] if i else candidates
        return candidates

    async def _get_replica(
        self, address: BlockAddress, policy: Redundancy, size: int, key: bytes
    ) -> bytes:
        """Fetch a verified replica and unseal it with ``key``; return the plaintext.

        Raises:
            Corrupt: the verified ciphertext does not decrypt under ``key`` (the reference
                is wrong, not the holder: no other holder is asked).
        """
        candidates = self._local_first(
            self._placement.closest(address, policy.nodes_needed + SPARES), policy.nodes_needed
        )
        found: list[bytes | Corrupt] = []

        async def fetch(index: int, contact: Contact) -> bytes | Corrupt:
            try:
                reply = await self._caller.call(
                    contact, "kv.get", {"address": address}, timeout=self._timeout
                )
            except RemoteError as exc:
                raise self._remote_error(contact, address, exc) from None
            payload = reply.get("payload") if isinstance(reply, dict) else None
            try:
                if not isinstance(payload, bytes):
                    raise Corrupt("malformed kv.get reply")
                # One worker job verifies and unseals (each hand-off costs a wake-up).
                opened = await self._in_thread(
                    len(payload) >= THREAD_BYTES, _open_replica, payload, address, key
                )
                if opened is None:
                    raise Corrupt("bytes do not hash to the address")
            except Corrupt as exc:
                self._report_corrupt(contact, f"replica of {address.hex()[:16]}", exc)
                raise
            return opened

        def accept(opened: bytes | Corrupt) -> _Progress:
            found.append(opened)
            return "done"

        with trio.move_on_after(self._timeout):
            done, not_found, _ = await self._hedged(candidates, 1, fetch, accept, size)
            if done:
                if isinstance(found[0], Corrupt):
                    raise found[0]
                return found[0]
            if not_found and not_found >= min(policy.write_quorum, len(candidates)):
                raise NotFound(f"chunk {address.hex()[:16]} not found")
        self._n.unavailable += 1
        logger.warning(
            "kv: chunk %s: no verified replica from %s",
            address.hex()[:16],
            ", ".join(c.node_id.hex()[:8] for c in candidates) or "no members",
        )
        raise Unavailable(1, 0)

    async def _get_fragments(
        self, address: BlockAddress, policy: Redundancy, size: int
    ) -> memoryview:
        total = policy.nodes_needed
        candidates = self._placement.closest(address, total + SPARES)
        manifest: list[Manifest] = []
        manifest_raw: list[bytes] = []
        got: dict[int, bytes] = {}
        k = policy.read_quorum

        async def fetch(position: int, contact: Contact) -> tuple[int, bytes]:
            preferred = position if position < total else -1
            args = {"address": address, "fragment": preferred, "skip": sorted(got)}
            if preferred in got or preferred < 0:
                missing = [i for i in range(total) if i not in got]
                args["fragment"] = missing[0] if missing else 0
            try:
                reply = await self._caller.call(contact, "kv.get", args, timeout=self._timeout)
            except RemoteError as exc:
                raise self._remote_error(contact, address, exc) from None
            what = f"fragment of {address.hex()[:16]}"
            try:
                if not isinstance(reply, dict):
                    raise Corrupt("malformed kv.get reply")
                raw, index, data = reply.get("manifest"), reply.get("index"), reply.get("fragment")
                if not (isinstance(raw, bytes) and type(index) is int and isinstance(data, bytes)):
                    raise Corrupt("malformed kv.get reply")
                if manifest_raw and raw == manifest_raw[0]:
                    checked = manifest[0]
                else:
                    checked = verify_manifest(address, raw)
                    if not manifest:
                        manifest.append(checked)
                        manifest_raw.append(raw)
                await self._in_thread(
                    len(data) >= THREAD_BYTES, verify_fragment, checked, index, data
                )
            except Corrupt as exc:
                self._report_corrupt(contact, what, exc)
                raise
            return index, data

        def accept(item: tuple[int, bytes]) -> _Progress:
            index, data = item
            if index in got:
                return "useless"
            got[index] = data
            # The verified manifest, not the caller's ref, says how many fragments decode it.
            needed = manifest[0].data if manifest else k
            return "done" if len(got) >= needed else "progress"

        with trio.move_on_after(self._timeout):
            fragment = -(-size // k)
            done, not_found, _ = await self._hedged(candidates, k, fetch, accept, fragment)
            if done:
                return await self._in_thread(
                    len(got[next(iter(got))]) * k >= THREAD_BYTES,
                    decode_verified_fragments,  # ``fetch`` verified each one
                    manifest[0],
                    got,
                )
            if not got and not_found >= min(policy.write_quorum, len(candidates)):
                raise NotFound(f"chunk {address.hex()[:16]} not found")
        self._n.unavailable += 1
        logger.warning(
            "kv: chunk %s: %d of %d fragments needed were fetched and verified (asked %s)",
            address.hex()[:16],
            len(got),
            k,
            ", ".join(c.node_id.hex()[:8] for c in candidates) or "no members",
        )
        raise Unavailable(k, len(got))

    # -- chunks: delete -------------------------------------------------------------------

    async def delete_chunk(self, ref: ChunkRef) -> None:
        """Release a chunk on every node near its address; absent chunks are fine.

        Raises:
            Unavailable: fewer than a write quorum of those nodes answered.

        Cancellation: the chunk may be deleted on some nodes only.
        """
        self._running()
        policy = ref.redundancy
        candidates = self._placement.closest(ref.address, policy.nodes_needed + SPARES)
        answered: list[NodeId] = []

        async def one(contact: Contact) -> None:
            try:
                await self._caller.call(
                    contact, "kv.delete", {"address": ref.address}, timeout=self._timeout
                )
            except (RpcError, RemoteError) as exc:
                logger.info(
                    "kv: delete of %s on %s failed: %s",
                    ref.address.hex()[:16],
                    contact.node_id.hex()[:8],
                    exc,
                )
                return
            answered.append(contact.node_id)

        async with trio.open_nursery() as nursery:
            for contact in candidates:
                nursery.start_soon(one, contact)
        needed = min(policy.write_quorum, len(candidates))
        if len(answered) < needed or not candidates:
            self._n.unavailable += 1
            raise Unavailable(needed, len(answered))

    # -- registers ------------------------------------------------------------------------

    def _seal(self, envelope: _Envelope) -> bytes:
        packed = msgpack.packb(
            [
                _ENVELOPE_VERSION,
                envelope.plaintext,
                envelope.since,
                [list(w) for w in envelope.writers],
            ],
            use_bin_type=True,
        )
        return seal_payload(self._keys.data_key, bytes(packed))

    def _open(self, value: RegisterValue) -> _Envelope | None:
        payload = value.payload
        if payload is None:
            return None
        cached = self._envelopes.get(payload)
        if cached is not None:
            self._envelopes.move_to_end(payload)
            return cached
        packed = open_payload(self._keys.data_key, payload)
        try:
            version, plaintext, since, writers = msgpack.unpackb(packed, raw=False)
            ok = (
                version == _ENVELOPE_VERSION
                and isinstance(plaintext, bytes)
                and type(since) is int
                and isinstance(writers, list)
                and all(
                    isinstance(w, list) and len(w) == 2 and all(isinstance(f, bytes) for f in w)
                    for w in writers
                )
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise Corrupt("malformed register envelope") from exc
        if not ok:
            raise Corrupt("malformed register envelope")
        envelope = _Envelope(plaintext, since, tuple((w[0], w[1]) for w in writers))
        self._remember(payload, envelope)
        return envelope

    def _remember(self, payload: bytes, envelope: _Envelope) -> None:
        """Keep what a (small) sealed payload holds: reads and edits of it skip unsealing."""
        if len(payload) <= _ENVELOPE_CACHE_MAX_BYTES:
            self._envelopes[payload] = envelope
            if len(self._envelopes) > _ENVELOPE_CACHE:
                self._envelopes.popitem(last=False)

    def _versioned(self, value: RegisterValue | None) -> Versioned | None:
        if value is None:
            return None
        envelope = self._open(value)
        return None if envelope is None else Versioned(envelope.plaintext, value.version)

    def _register(self, address: BlockAddress) -> _Register:
        entry = self._registers.get(address)
        if entry is None:
            entry = _Register(Proposer(self._proposer_id))
            entry.proposer.observe(self._ballot_floor)
            self._registers[address] = entry
            if len(self._registers) > PROPOSER_CACHE:
                for old, held in list(self._registers.items()):
                    if len(self._registers) <= PROPOSER_CACHE:
                        break
                    if not held.lock.locked() and held.lock.statistics().tasks_waiting == 0:
                        del self._registers[old]
        else:
            self._registers.move_to_end(address)
        return entry

    async def _change(
        self,
        name: bytes,
        change: Read | _Mutation,
        redundancy: Redundancy | None,
    ) -> Decided:
        """Run rounds of ``change`` on register ``name`` until decided (see the module doc)."""
        address = register_address(self._keys.signing.public_key, name)
        size = register_replicas(redundancy or self._default)
        return await self._consensus(address, change, size=size, hint=None)

    def _start_set(
        self, address: BlockAddress, entry: _Register, size: int, hint: tuple[NodeId, ...] | None
    ) -> tuple[tuple[NodeId, ...], tuple[NodeId, ...]]:
        """Return (hint, probe candidates) for the next round (see the module docstring).

        A configuration seen decided needs no probe while it is where placement would put
        the register. Once placement moved on, the register may have moved and, deleted
        there, been collected: its old acceptors, empty, can no longer point to the new set,
        so the round probes like a client that never saw the register.
        """
        nearest = tuple(c.node_id for c in self._placement.closest(address, size + PROBE_SPARES))
        cached = entry.replicas
        if cached is not None:
            if set(cached) == set(nearest[: len(cached)]):
                return cached, ()
            start = nearest[:size]
            return start, tuple(dict.fromkeys((*start, *cached, *nearest)))
        start = hint if hint is not None else nearest[:size]
        return start, tuple(dict.fromkeys((*start, *nearest)))

    async def _consensus(
        self,
        address: BlockAddress,
        change: Change,
        *,
        size: int,
        hint: tuple[NodeId, ...] | None,
        write_back_all: bool = False,
    ) -> Decided:
        """Run rounds of ``change`` on the register at ``address`` until decided.

        ``size`` is the replica count of a register this creates; ``hint`` a replica set
        to start from when this client has seen no decided value of the register (else
        the ``size`` nearest members). ``write_back_all``: wait, until the deadline, for
        every acceptor of the decided configuration to answer the write.
        """
        self._running()
        entry = self._register(address)
        deadline = trio.current_time() + self._timeout
        try:
            entry.lock.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_at(deadline) as waited:
                await entry.lock.acquire()
            if waited.cancelled_caught:
                self._n.unavailable += 1
                raise Unavailable(
                    majority(size), 0, "timed out waiting for this client's turn"
                ) from None
        try:
            start: tuple[NodeId, ...] = ()
            last_ballot = None
            attempt = 0
            for attempt in range(MAX_ROUNDS):
                start, probe = self._start_set(address, entry, size, hint)
                if not start:
                    self._n.unavailable += 1
                    raise Unavailable(majority(size), 0, "no storage members known")
                self._n.paxos_rounds += 1
                self._n.probes += bool(probe)
                before = change.attempts if isinstance(change, _Mutation) else 0
                rnd = entry.proposer.begin(change, start, probe=probe)
                last_ballot = rnd.ballot
                # An Unavailable keeps the configuration this client saw decided: its
                # acceptors (or their successors, which they point to) are where the
                # register is; probing by placement instead could meet only acceptors that
                # never held it and take the register for absent.
                outcome, maybe_accepted = await self._drive(
                    address, entry, rnd, start, deadline, drain=write_back_all
                )
                if isinstance(outcome, Decided):
                    if outcome.value is not None:
                        entry.replicas = outcome.value.replica_set
                        entry.verified = outcome.value
                    self._n.register_ops += 1
                    return outcome
                if isinstance(outcome, Refused):
                    logger.error(
                        "kv: register %s: acceptors refused our signature at ballot %s "
                        "(replica set %s)",
                        address.hex()[:16],
                        outcome.ballot,
                        _ids(start),
                    )
                    raise outcome.error()
                self._n.preemptions += 1
                if not maybe_accepted and isinstance(change, _Mutation):
                    change.attempts_failed(before)
                entry.proposer.observe(outcome.promised)  # start the next round above it
                self._ballot_floor = higher_ballot(self._ballot_floor, outcome.promised)
                backoff = self._rng.uniform(0, min(BACKOFF_CAP, _BACKOFF_BASE * 2**attempt))
                logger.debug(
                    "kv: register %s: ballot %s preempted by %s; retrying in %.3f s",
                    address.hex()[:16],
                    outcome.ballot,
                    outcome.promised,
                    backoff,
                )
                if trio.current_time() + backoff >= deadline:
                    break
                await trio.sleep(backoff)
            self._n.unavailable += 1
            logger.warning(
                "kv: register %s: gave up after %d preempted rounds, the last at ballot %s "
                "(quorum %d of replica set %s)",
                address.hex()[:16],
                attempt + 1,
                last_ballot,
                majority(len(start)),
                _ids(start),
            )
            raise Unavailable(majority(len(start)), 0, "preempted until the deadline")
        finally:
            entry.lock.release()

    async def _drive(
        self,
        address: BlockAddress,
        entry: _Register,
        rnd: Round,
        hint: tuple[NodeId, ...],
        deadline: float,
        *,
        drain: bool = False,
    ) -> tuple[Outcome, bool]:
        """Move one round's messages until it has an outcome; raise Unavailable otherwise.

        Returns the outcome and whether any acceptor may have accepted one of the round's
        proposals (False only when every ``Accept`` sent was answered with a rejection).
        With ``drain``, a decided round still waits (until the deadline) for the replies
        of every acceptor it wrote to.
        """
        replies: trio.MemorySendChannel[tuple[Send, Message | None]]
        replies, receive = trio.open_memory_channel(math.inf)
        outstanding = accepts_sent = accepts_rejected = 0
        error: Exception | None = None

        def tally(send: Send, reply: Message | None) -> None:
            nonlocal accepts_rejected
            if isinstance(send.message, Accept) and isinstance(reply, Reject):
                accepts_rejected += 1

        with receive:

            def dispatch(sends: list[Send]) -> None:
                nonlocal outstanding, accepts_sent
                encoded: dict[Request, bytes] = {}  # one accept goes to every acceptor
                for send in sends:
                    outstanding += 1
                    accepts_sent += isinstance(send.message, Accept)
                    message = encoded.get(send.message)
                    if message is None:
                        message = encoded[send.message] = encode_message(send.message)
                    self._post(
                        address,
                        entry,
                        send.to,
                        message,
                        deadline,
                        _deliverer(replies, send),
                        read_only=False,
                    )

            try:
                with trio.move_on_at(deadline):
                    dispatch(rnd.start())
                    while rnd.outcome is None and outstanding:
                        send, reply = await receive.receive()
                        outstanding -= 1
                        tally(send, reply)
                        if isinstance(reply, Promise | Accepted | Reject):
                            dispatch(rnd.receive(send.to, reply))
                    late = (isinstance(rnd.outcome, Preempted) and accepts_sent) or (
                        drain and isinstance(rnd.outcome, Decided)
                    )
                    if late:
                        # Whether our value may sit on some acceptor decides how a retry
                        # must treat it (see _Mutation); the last replies are usually close.
                        grace = math.inf if drain else _LATE_REPLY_GRACE
                        with trio.move_on_after(grace):
                            while outstanding:
                                send, reply = await receive.receive()
                                outstanding -= 1
                                tally(send, reply)
                                if isinstance(reply, Promise | Accepted | Reject):
                                    rnd.receive(send.to, reply)
            except Exception as exc:  # from the change function: re-raised below, unwrapped
                error = exc
        if error is not None:
            rnd.unavailable()  # abandon the round
            raise error
        if rnd.outcome is None:
            missing = rnd.unavailable()
            self._n.unavailable += 1
            logger.warning(
                "kv: register %s: no quorum at ballot %s (needed %d, reached %d; replica set %s%s)",
                address.hex()[:16],
                rnd.ballot,
                missing.needed,
                missing.reached,
                _ids(hint),
                ", probing" if rnd.is_probing else "",
            )
            raise missing
        outcome = rnd.outcome
        if drain and isinstance(outcome, Decided) and outcome.ballot is not None:
            outcome = dataclass_replace(outcome, accepted_by=rnd.accepted_by)
        return outcome, accepts_rejected < accepts_sent

    def _post(
        self,
        address: BlockAddress,
        entry: _Register,
        to: NodeId,
        message: bytes,
        deadline: float,
        deliver: Callable[[Message | None], None],
        *,
        read_only: bool,
    ) -> None:
        """Queue encoded consensus ``message`` for acceptor ``to``; ``deliver`` gets the reply.

        Messages queued for one node while the event loop runs other tasks travel in one
        RPC (``kv.paxos_batch``); read-only ones (``Inspect``) apart from the others, so a
        quick read never waits for another round's fsync. ``deliver`` receives the verified
        reply, or None when the acceptor failed or could not be reached.
        """
        key = (to, read_only)
        box = self._outboxes.get(key)
        if box is None:
            box = self._outboxes[key] = _Outbox(to)
        box.items.append(_Posted(address, entry, message, deadline, deliver))
        if len(box.items) == 1:
            self._running().start_soon(self._flush, box)

    async def _flush(self, box: _Outbox) -> None:
        """Send what ``box`` holds in one RPC and hand each reply to its round."""
        # One pass of the scheduler: messages other tasks queue meanwhile join this call.
        await trio.lowlevel.cancel_shielded_checkpoint()
        items, box.items = box.items, []
        contact = self._placement.contact(box.node)
        if contact is None:
            logger.info("kv: acceptor %s is unknown", box.node.hex()[:8])
            for item in items:
                item.deliver(None)
            return
        timeout = max(0.001, max(item.deadline for item in items) - trio.current_time())
        self._n.consensus_calls += 1
        self._n.consensus_messages += len(items)
        raws: list[Any]
        try:
            if len(items) == 1:
                item = items[0]
                result = await self._caller.call(
                    contact,
                    "kv.paxos",
                    {"address": item.address, "message": item.message},
                    timeout=timeout,
                )
                raws = [result.get("message") if isinstance(result, dict) else None]
            else:
                result = await self._caller.call(
                    contact,
                    "kv.paxos_batch",
                    {"batch": [[item.address, item.message] for item in items]},
                    timeout=timeout,
                )
                got = result.get("batch") if isinstance(result, dict) else None
                raws = got if isinstance(got, list) and len(got) == len(items) else []
        except (RpcError, RemoteError) as exc:
            logger.info(
                "kv: acceptor %s: %d consensus message(s) failed: %s",
                box.node.hex()[:8],
                len(items),
                exc,
            )
            raws = [exc] * len(items)
        if len(raws) != len(items):
            self._report_corrupt(contact, "batch of consensus replies", Corrupt("wrong length"))
            raws = [None] * len(items)
        for item, raw in zip(items, raws, strict=True):
            item.deliver(self._check_reply(contact, item, raw))

    def _check_reply(self, contact: Contact, item: _Posted, raw: Any) -> Message | None:
        """Decode and verify one acceptor's reply (see the module docstring); None if bad."""
        address, entry = item.address, item.entry
        if isinstance(raw, Exception):
            return None
        if isinstance(raw, list) and len(raw) == 2 and all(isinstance(f, str) for f in raw):
            logger.info(
                "kv: acceptor %s of register %s: %s: %s",
                contact.node_id.hex()[:8],
                address.hex()[:16],
                *raw,
            )
            return None
        try:
            if not isinstance(raw, bytes):
                raise Corrupt("malformed kv.paxos reply")
            cached = entry.last_reply
            if cached is not None and cached[0] == raw:
                return cached[1]  # acceptors in step send identical bytes: decoded and checked
            decoded = decode_message(raw)
            if not isinstance(decoded, Promise | Accepted | Reject | Report):
                raise Corrupt("a request where a reply was expected")
            value = decoded.value if isinstance(decoded, Promise | Report) else None
            if value is not None and value != entry.verified:
                if not verify_register_value(address, value):
                    self._n.forged_values += 1
                    raise Corrupt("reported a value with a bad signature")
                entry.verified = value
            if value is not None:
                entry.last_reply = (raw, decoded)
            return decoded
        except Corrupt as exc:
            self._report_corrupt(contact, f"consensus reply for {address.hex()[:16]}", exc)
        return None

    async def _quick_read(self, address: BlockAddress) -> Decided | None:
        """A read that writes nothing (:class:`storage.paxos.QuickRead`), or None to fall back.

        Only with a configuration this client saw decided (else the full round probes).
        """
        entry = self._register(address)
        if entry.replicas is None:
            return None
        quick = QuickRead(entry.replicas)
        replies: trio.MemorySendChannel[tuple[NodeId, Message | None]]
        replies, receive = trio.open_memory_channel(math.inf)
        deadline = trio.current_time() + min(QUICK_READ_WAIT, self._timeout)
        inspect = encode_message(Inspect())

        def dispatch(nodes: list[NodeId]) -> None:
            for node in nodes:
                self._post(
                    address,
                    entry,
                    node,
                    inspect,
                    deadline,
                    _deliverer(replies, node),
                    read_only=True,
                )

        with receive, trio.move_on_at(deadline):
            dispatch(quick.start())
            while not quick.settled:
                to, reply = await receive.receive()
                dispatch(quick.receive(to, reply if isinstance(reply, Report) else None))
        decided = quick.outcome
        if decided is None or decided.value is None:
            self._n.quick_read_fallbacks += 1
            return None
        entry.replicas = decided.value.replica_set
        self._n.quick_reads += 1
        self._n.register_ops += 1
        return decided

    async def read(self, name: bytes) -> Versioned:
        """Linearizable read of register ``name``.

        Raises:
            NotFound: the register does not exist or was deleted.
            Unavailable: no quorum of its replica set answered in time.

        Cancellation: harmless.
        """
        self._running()
        address = register_address(self._keys.signing.public_key, name)
        decided = await self._quick_read(address)
        if decided is None:
            decided = await self._change(name, Read(), None)
        current = self._versioned(decided.value)
        if current is None:
            raise NotFound(f"register {name!r} not found")
        return current

    async def edit(
        self, name: bytes, edit: Edit, *, redundancy: Redundancy | None = None
    ) -> Versioned | None:
        """Apply ``edit`` to the plaintext atomically; return the new value (None: deleted).

        ``edit`` may run several times (once per round) and must be pure; an exception it
        raises propagates and nothing is written. ``redundancy`` sets the replica count of a
        register this call creates.

        Raises:
            Unavailable: no quorum in time (the edit may or may not have been applied).
            PermissionDenied: the acceptors refused this client's signature.

        Cancellation: the edit may or may not have been applied.
        """

        def compute(current: Versioned | None) -> tuple[bytes | None, bool]:
            return edit(None if current is None else current.value), False

        mutation = _Mutation(self, name, compute)
        decided = await self._change(name, mutation, redundancy)
        return self._versioned(decided.value)

    async def compare_and_set(
        self, name: bytes, expected_version: int | None, value: bytes | None
    ) -> Versioned | None:
        """Write ``value`` (``None`` deletes) only if the version is ``expected_version``.

        ``expected_version=None`` means "only if the register does not exist" (never
        written, or deleted).

        Raises:
            Conflict: the register holds something else; ``current`` is a
                :class:`Versioned` of its plaintext, or None when it does not exist.
            Unavailable: no quorum in time (the write may or may not have been applied).

        Cancellation: the write may or may not have been applied.
        """

        def compute(current: Versioned | None) -> tuple[bytes | None, bool]:
            if expected_version is None:
                ok = current is None
            else:
                ok = current is not None and current.version == expected_version
            return value, not ok

        mutation = _Mutation(self, name, compute)
        decided = await self._change(name, mutation, None)
        current = self._versioned(decided.value)
        if decided.conflict:
            raise Conflict(current)
        return current

    async def delete(self, name: bytes) -> None:
        """Delete register ``name`` (a tombstone); deleting an absent register is fine.

        Raises:
            Unavailable: no quorum in time (it may or may not be deleted).

        Cancellation: it may or may not be deleted.
        """
        await self._change(name, _Mutation(self, name, lambda current: (None, False)), None)

    # -- registers by address (repair, rebalancing, drain) ----------------------------------

    async def move_register(
        self, address: BlockAddress, new_set: tuple[NodeId, ...], *, hint: tuple[NodeId, ...]
    ) -> RegisterValue | None:
        """Move register ``address`` to ``new_set`` by consensus.

        BeginReplicaChange then FinishReplicaChange. Resumes or replaces a half-done move.
        Returns the final value (None if the register does not exist). Raises Unavailable /
        Conflict as other operations.

        No owner key is needed: the replica sets are not covered by the value's signature,
        and values are not re-signed. The register is first moved to the joint
        configuration (old and new set: every change then needs a majority of both), then
        to ``new_set`` alone, so no acknowledged write is lost whatever the overlap of the
        two sets. A move under way to another set is aborted first (back to its old set);
        one under way to ``new_set`` is finished. A tombstone moves like any value. The
        final step waits (until the timeout) for every acceptor of the joint configuration,
        and acceptors named by ``hint`` or the old set that left the register are then sent
        the final value as decided (best effort): they keep pointing proposers with old
        hints at ``new_set``, and their nodes see that they no longer hold the register.

        Args:
            address: the register's address.
            new_set: the acceptors that should hold it (distinct node ids).
            hint: a replica set the register has or had (where to start looking when this
                client has not seen a decided value of it).

        Raises:
            Unavailable: no quorum (of the old, the joint or the new configuration) in time;
                the move may have been left half-done (a later call resumes it).
            Conflict: another move or abort raced this one; ``current`` is the value then.
            InvalidArgument: ``new_set`` or ``hint`` is empty or has duplicates.

        Cancellation: the move may be left half-done (a later call resumes or replaces it).
        """
        target = _checked_set("new_set", new_set)
        start = _checked_set("hint", hint)
        size = len(start)
        for _ in range(_MOVE_STEPS):
            begun = await self._consensus(
                address, BeginReplicaChange(target), size=size, hint=start
            )
            if begun.value is None:
                return None
            if not begun.conflict:
                break
            # Moving elsewhere: back to the old set first, then start this move.
            await self._consensus(address, AbortReplicaChange(), size=size, hint=start)
        else:
            raise Conflict(begun.value, "the register kept moving elsewhere")
        finished = await self._consensus(
            address, FinishReplicaChange(target), size=size, hint=start, write_back_all=True
        )
        if finished.conflict:
            raise Conflict(finished.value, "another move or abort came first")
        value, ballot = finished.value, finished.ballot
        if value is not None and ballot is not None:
            named = set(start) | begun.value.config.members
            if begun.previous is not None:
                named |= begun.previous.config.members
            left = named - value.config.members - finished.accepted_by
            if left:
                await self._tell_retired(address, value, ballot, left)
        self._n.registers_moved += 1
        logger.info(
            "kv: register %s now on %s",
            address.hex()[:16],
            _ids(finished.value.replica_set) if finished.value is not None else "nothing",
        )
        return finished.value

    async def _tell_retired(
        self, address: BlockAddress, value: RegisterValue, ballot: Ballot, nodes: set[NodeId]
    ) -> None:
        """Give acceptors that left the register its final value (best effort, bounded).

        They are sent exactly the ``Accept(ballot, value)`` the deciding round sent the
        others (one value per ballot still holds), and count toward no quorum of
        ``value``: they only point proposers with old hints at the new set, and show the
        node that they left.
        """
        entry = self._register(address)
        replies: trio.MemorySendChannel[tuple[NodeId, Message | None]]
        replies, receive = trio.open_memory_channel(math.inf)
        message = encode_message(Accept(ballot, value))
        deadline = trio.current_time() + self._timeout
        for node in sorted(nodes):
            self._post(
                address,
                entry,
                node,
                message,
                deadline,
                _deliverer(replies, node),
                read_only=False,
            )
        told: set[NodeId] = set()
        with receive, trio.move_on_at(deadline):
            for _ in nodes:
                node, reply = await receive.receive()
                if isinstance(reply, Accepted):
                    told.add(node)
        if told != nodes:
            logger.info(
                "kv: register %s: acceptors %s that left it did not take its final value",
                address.hex()[:16],
                _ids(tuple(sorted(nodes - told))),
            )

    async def sync_register(
        self, address: BlockAddress, *, hint: tuple[NodeId, ...]
    ) -> RegisterValue | None:
        """Read register ``address`` by a round that writes it back to every acceptor.

        A linearizable read round by address that writes the current value back to every
        acceptor of its configuration (bringing a lagging or new acceptor up to date).
        Returns the value (None if absent).

        The round waits, until the client's timeout, for every acceptor of the value's
        configuration to answer the write-back; one that cannot be reached (or has promised
        a higher ballot meanwhile) is left as it was, logged and counted
        (``unsynced_acceptors``), and the value is still returned.

        Args:
            address: the register's address.
            hint: a replica set the register has or had.

        Raises:
            Unavailable: no quorum in time.
            InvalidArgument: ``hint`` is empty or has duplicates.

        Cancellation: harmless (the write-back writes the current value).
        """
        start = _checked_set("hint", hint)
        decided = await self._consensus(
            address, Read(), size=len(start), hint=start, write_back_all=True
        )
        value = decided.value
        if value is not None:
            missing = value.config.members - decided.accepted_by
            if missing:
                self._n.unsynced_acceptors += len(missing)
                logger.info(
                    "kv: register %s: write-back did not reach %s",
                    address.hex()[:16],
                    _ids(tuple(sorted(missing))),
                )
        return value


def _deliverer(
    channel: trio.MemorySendChannel[tuple[T, Message | None]], tag: T
) -> Callable[[Message | None], None]:
    """Return a callback that hands a reply to a round waiting on ``channel``, if still."""

    def deliver(reply: Message | None) -> None:
        # Once the round is over a late reply is of no use.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            channel.send_nowait((tag, reply))

    return deliver


def _checked_set(what: str, nodes: tuple[NodeId, ...]) -> tuple[NodeId, ...]:
    if not isinstance(nodes, tuple) or not nodes or len(set(nodes)) != len(nodes):
        raise InvalidArgument(f"{what} must be a non-empty tuple of distinct node ids")
    if not all(isinstance(n, bytes) for n in nodes):
        raise InvalidArgument(f"{what} must hold node ids as bytes")
    return nodes


def _ids(nodes: tuple[NodeId, ...]) -> str:
    return "[" + ", ".join(n.hex()[:8] for n in nodes) + "]"
