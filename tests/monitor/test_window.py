"""A test window's server figures: counter increases over the window and their cross-checks
against the clients' counts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pytest_aifactory.monitor.window import CROSS_CHECK_TOLERANCE, counter_increase, cross_check


def samples(
    points: list[tuple[float, float]],
    instance: str = "a:1",
    series: str = "postgres_transactions",
    node: str = "n1",
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "series": series,
            "service": "db",
            "node": node,
            "instance": instance,
            "labels": json.dumps({"datname": "aifactory"}),
            "timestamp": [t for t, _ in points],
            "value": [v for _, v in points],
        }
    )


def test_increase_from_the_last_sample_before_to_the_first_after() -> None:
    frame = samples([(0, 5), (10, 7), (11, 20), (15, 50), (21, 60), (30, 99)])
    assert counter_increase(frame, "postgres_transactions", 10.5, 20) == 60 - 7


def test_a_restarted_server_counts_from_zero() -> None:
    frame = samples([(0, 100), (5, 150), (6, 3), (12, 10)])
    assert counter_increase(frame, "postgres_transactions", 1, 11) == (150 - 100) + 3 + (10 - 3)


def test_instances_add_up_and_an_uncovered_one_voids_the_figure() -> None:
    both = pd.concat([samples([(0, 0), (10, 4)]), samples([(0, 1), (10, 3)], "b:1")])
    assert counter_increase(both, "postgres_transactions", 1, 9) == 4 + 2
    late = pd.concat([samples([(0, 0), (10, 4)]), samples([(5, 1), (10, 3)], "b:1")])
    assert counter_increase(late, "postgres_transactions", 1, 9) is None
    assert counter_increase(both, "no_such_series", 1, 9) is None


def test_a_reset_in_the_middle_of_the_window_counts_the_value_after_it_in_full() -> None:
    # from 60 (last before 2) to 100, then the restarted counter's 5 and its growth to 12
    frame = samples([(0, 60), (4, 80), (8, 100), (9, 5), (14, 12), (20, 30)])
    assert counter_increase(frame, "postgres_transactions", 2, 14) == (100 - 60) + 5 + (12 - 5)


def test_two_resets_and_a_drop_to_zero() -> None:
    frame = samples([(0, 10), (1, 20), (2, 0), (3, 4), (4, 1), (5, 3)])
    assert counter_increase(frame, "postgres_transactions", 0, 5) == 10 + 0 + 4 + 1 + 2


def test_sub_series_reset_on_their_own_and_other_series_do_not_count() -> None:
    frame = pd.concat(
        [
            samples([(0, 100), (5, 3), (10, 8)], node="n1"),  # restarted: 3 + 5
            samples([(0, 10), (5, 20), (10, 30)], node="n2"),  # same instance, other node
            samples([(0, 1), (10, 2)], instance="b:1"),
            samples([(0, 0), (10, 1000)], series="postgres_rows"),
        ]
    )
    assert counter_increase(frame, "postgres_transactions", 0, 10) == (3 + 5) + 20 + 1
    assert counter_increase(frame, "postgres_rows", 0, 10) == 1000


def test_without_a_window_every_sample_counts() -> None:
    frame = samples([(0, 5), (10, 7), (11, 2), (30, 9)])
    assert counter_increase(frame, "postgres_transactions") == 2 + 2 + 7
    assert counter_increase(frame, "postgres_transactions", start=10) == 2 + 7


def test_figures_apart_by_more_than_the_tolerance_are_flagged() -> None:
    close = cross_check("requests", 1000, 1000 * (1 + CROSS_CHECK_TOLERANCE / 2))
    assert not close["flagged"]
    far = cross_check("requests", 1000, 1300)
    assert far["flagged"]
    assert far["difference"] == pytest.approx(-300 / 1300)
    unknown = cross_check("requests", 1000, None)
    assert (unknown["server"], unknown["difference"], unknown["flagged"]) == (None, None, False)


@pytest.mark.parametrize(
    ("client", "server", "flagged"),
    [
        (150, 190, False),  # 40 of the server's own transactions on a small load
        (150, 250, False),  # the whole allowance
        (150, 251, True),  # more than the server does by itself
        (150, 120, True),  # the server behind the clients is never explained
        (10_000, 10_900, False),  # within the tolerance anyway
    ],
)
def test_the_servers_own_work_explains_only_a_server_ahead(
    client: float, server: float, flagged: bool
) -> None:
    check = cross_check("requests", client, server, server_extra=100)
    assert check["flagged"] is flagged
    assert check["server_extra_allowed"] == 100
    assert "server_extra_allowed" not in cross_check("requests", client, server)
