"""The grace period after a lost create (stsync.lookup_grace): when a lookup is trusted,
and the looks again on each record's own schedule."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from stsync.lookup_grace import GracePeriod, Rechecks, parse_stamp, stamp

T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


class FakeTime:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start.timestamp()
        self.slept = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds

    def at(self) -> float:
        return self.now - T0.timestamp()


def grace(seconds: float, fake: FakeTime) -> GracePeriod:
    return GracePeriod(seconds, clock=fake.clock, sleep=fake.sleep)


def test_looks_double_from_one_second_and_end_with_the_grace_period():
    fake = FakeTime()
    assert grace(30, fake).look_offsets() == [1, 2, 4, 8, 16, 30]
    assert grace(8, fake).look_offsets() == [1, 2, 4, 8]
    assert grace(1, fake).look_offsets() == [1]
    assert grace(0, fake).look_offsets() == []


def test_a_lookup_is_trusted_from_the_grace_period_after_the_doubt_began():
    fake = FakeTime()
    period = grace(30, fake)
    assert not period.trusts(T0)
    fake.now += 29.9
    assert not period.trusts(T0)
    fake.now += 0.1
    assert period.trusts(T0) and period.trusted_from(T0) == T0 + timedelta(seconds=30)
    assert grace(0, fake).trusts(period.now())


def test_each_record_is_looked_at_on_its_own_schedule_until_settled_or_its_last_look():
    fake = FakeTime()
    looks: dict[str, list[float]] = {"found at 4 s": [], "never found": [], "lost later": []}
    found_at = {"found at 4 s": 4.0, "never found": None, "lost later": None}
    rechecks: Rechecks[str] = Rechecks(grace(8, fake))
    rechecks.add("found at 4 s", T0)
    rechecks.add("never found", T0)
    rechecks.add("lost later", T0 + timedelta(seconds=3))

    def check(due):
        answers = []
        for name in due:
            looks[name].append(fake.at())
            answers.append(found_at[name] is None or fake.at() < found_at[name])
        return answers

    left = rechecks.run(check)

    assert left == ["never found", "lost later"]
    assert looks["found at 4 s"] == [1, 2, 4]
    assert looks["never found"] == [1, 2, 4, 8]
    assert looks["lost later"] == [4, 5, 7, 11]
    assert fake.at() == pytest.approx(11)


def test_a_record_whose_looks_are_all_past_gets_one_last_look():
    fake = FakeTime(T0 + timedelta(seconds=100))
    rechecks: Rechecks[str] = Rechecks(grace(30, fake))
    rechecks.add("old", T0)
    seen = []
    assert rechecks.run(lambda due: [seen.append(list(due)) or True for _ in due]) == ["old"]
    assert seen == [["old"]] and fake.slept == 0


def test_no_grace_period_means_no_look_again():
    fake = FakeTime()
    rechecks: Rechecks[str] = Rechecks(grace(0, fake))
    rechecks.add("x", T0)
    assert rechecks.run(lambda due: pytest.fail("no look expected")) == ["x"]


def test_a_stop_leaves_every_record_still_in_doubt():
    fake = FakeTime()
    stop = threading.Event()
    rechecks: Rechecks[str] = Rechecks(grace(30, fake), stop=stop)
    rechecks.add("a", T0)
    rechecks.add("b", T0)

    def check(due):
        stop.set()
        return [True for _ in due]

    assert sorted(rechecks.run(check)) == ["a", "b"]
    assert fake.at() < 2


def test_check_must_answer_once_per_record():
    fake = FakeTime()
    rechecks: Rechecks[str] = Rechecks(grace(2, fake))
    rechecks.add("a", T0)
    with pytest.raises(ValueError, match="once per record"):
        rechecks.run(lambda due: [])


def test_stamps_round_trip_to_the_millisecond():
    moment = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert stamp(moment) == "2025-06-01T12:00:00.123Z"
    assert parse_stamp(stamp(moment)) == moment.replace(microsecond=123000)
    assert parse_stamp("2025-06-01T12:00:00") == datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert parse_stamp("garbage") is None and parse_stamp(None) is None
