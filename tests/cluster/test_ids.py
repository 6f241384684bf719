"""Task ids carry their home process; frame ids with a bus are `<process>.<n>` and an id
another process minted replays nothing (tether.actors.task_ids)."""

from __future__ import annotations

from tether.actors.task_ids import FrameIds, home_of, new_task_id, slot_of


def test_task_ids_carry_slot_and_home() -> None:
    plain = new_task_id(0x2A)
    assert slot_of(plain) == 0x2A and home_of(plain) is None
    homed = new_task_id(0x2A, "a1b2c3d4")
    assert homed.startswith("2a.a1b2c3d4-")
    assert slot_of(homed) == 0x2A and home_of(homed) == "a1b2c3d4"
    for foreign in ("p-123", "nonsense", "zz.x-1"):
        assert slot_of(foreign) is None  # a public call's id, garbage: no session


def test_frame_ids_with_a_bus_are_process_dot_number() -> None:
    ids = FrameIds(5, process="abc")
    n = next(ids)
    assert ids.render(n) == "abc.5" and ids.parse("abc.5") == 5
    for other in ("def.5", "5", "abc", "abc.x", "", None):
        assert ids.parse(other) is None
    single = FrameIds(7)
    assert single.render(next(single)) == "7" and single.parse("7") == 7
    assert single.parse("abc.7") is None
