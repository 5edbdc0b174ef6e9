"""The line protocol between ``ballast up`` and its node processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from dht.ids import Address
from interfaces import up_node
from interfaces.config import NodeConfig
from interfaces.node import NodeStartError
from interfaces.up_node import GatewaySpec, NodeSpec
from storage.errors import Unavailable


def test_node_spec_round_trips() -> None:
    config = NodeConfig(
        data_dir=Path("/d/node-1"),
        listen=Address("127.0.0.1", 4100),
        capacity_bytes=1 << 30,
        bootstrap=(Address("127.0.0.1", 4101), Address("::1", 4102)),
        eviction_delay=12.5,
        admin_listen=Address("127.0.0.1", 0),
    )
    gateway = GatewaySpec(
        s3=Address("127.0.0.1", 0),
        key_file=Path("/d/gateway.key"),
        data_dir=Path("/d"),
        members=3,
        redundancy=3,
        region="eu-west-1",
    )
    for spec in (
        NodeSpec(config, gateway, "info", "json"),
        NodeSpec(NodeConfig(data_dir=Path("/d/node-2")), None, "warning", "text"),
    ):
        line = spec.to_json()
        assert "\n" not in line
        assert NodeSpec.from_json(line) == spec


@pytest.mark.parametrize("line", ["", "[]", "{}", '{"data_dir": "/d"}', "not json"])
def test_malformed_spec_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="not a node specification"):
        NodeSpec.from_json(line)


async def test_a_start_up_step_is_retried_while_there_is_no_quorum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[float] = []

    async def flaky() -> str:
        attempts.append(trio.current_time())
        if len(attempts) < 3:
            raise Unavailable(2, 1)
        return "done"

    assert await up_node._retrying_unavailable(flaky, 30.0) == "done"
    assert len(attempts) == 3

    async def never() -> str:
        raise Unavailable(2, 0)

    started = trio.current_time()
    with pytest.raises(NodeStartError, match="no quorum"):
        await up_node._retrying_unavailable(never, 5.0)
    assert 4.0 <= trio.current_time() - started <= 5.0
