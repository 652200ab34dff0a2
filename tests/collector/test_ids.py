from __future__ import annotations

from datetime import UTC, datetime, timedelta

from collector.ids import is_run_id, new_run_id, run_started_at


def test_run_ids_are_unique_and_well_formed() -> None:
    ids = {new_run_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(is_run_id(i) for i in ids)


def test_run_ids_sort_by_start_time() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [new_run_id(start + timedelta(seconds=s)) for s in (0, 1, 3600, 86400 * 40)]
    assert ids == sorted(ids)
    assert ids[0].startswith("20260101T000000Z-")


def test_is_run_id_rejects_hostile_text() -> None:
    for text in (
        "",
        "../../x",
        "20260101T000000Z-abc",
        'x") |> drop()',
        "20260101T000000Z-ABCDEFGHJK",
    ):
        assert not is_run_id(text)


def test_run_started_at_reads_the_time_prefix() -> None:
    start = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert run_started_at(new_run_id(start)) == start
    assert run_started_at("my-own-run") is None
