"""The chunk read hedge delay of the networked key-value client (pure arithmetic)."""

from __future__ import annotations

import pytest

from storage.kv_client import HEDGE_DELAY, HEDGE_DELAY_MAX, hedge_delay

MiB = 1024 * 1024


def test_small_answers_hedge_after_the_base_delay() -> None:
    assert hedge_delay(HEDGE_DELAY, 0, 1 / 50e6) == HEDGE_DELAY
    assert hedge_delay(HEDGE_DELAY, 4096, 1 / 50e6) == pytest.approx(HEDGE_DELAY, abs=1e-3)


def test_large_answers_wait_for_twice_their_expected_transfer() -> None:
    # 4 MiB at 50 MB/s take 84 ms: a healthy holder is not duplicated before 2 x that.
    assert hedge_delay(HEDGE_DELAY, 4 * MiB, 1 / 50e6) == pytest.approx(
        HEDGE_DELAY + 2 * 4 * MiB / 50e6
    )
    assert hedge_delay(HEDGE_DELAY, 4 * MiB, 1 / 50e6) > hedge_delay(HEDGE_DELAY, MiB, 1 / 50e6)


def test_a_stalled_holder_is_still_hedged_after_the_maximum() -> None:
    assert hedge_delay(HEDGE_DELAY, 64 * MiB, 1 / 1e6) == HEDGE_DELAY_MAX
    assert HEDGE_DELAY < HEDGE_DELAY_MAX < 1.0


def test_a_base_above_the_maximum_is_kept() -> None:
    assert hedge_delay(2.0, 4 * MiB, 1 / 50e6) == 2.0
