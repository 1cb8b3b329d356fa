"""trainer.schedule: positions, micro-batch offsets and validation."""

import pytest

from trainer.errors import UserError
from trainer.schedule import Entry, Schedule


def test_critic_5_generator_1():
  s = Schedule(cycle=[("critic", 5), ("generator", 1)])
  models = [s.position(u).phase.name for u in range(12)]
  assert models == ["critic"] * 5 + ["generator"] + ["critic"] * 5 + ["generator"]
  assert s.updates_per_phase(12) == {"critic": 10, "generator": 2}
  assert s.position(7).updates_left == 4  # update 7 is the 2nd critic update of the 2nd cycle


def test_warmup_then_alternation():
  s = Schedule(warmup=[("a", 100)], cycle=[("a", 1), ("b", 1)])
  assert [s.position(u).phase.name for u in (0, 99, 100, 101, 102, 103)] == ["a", "a", "a", "b", "a", "b"]
  assert s.position(0).updates_left == 100
  assert s.updates_per_phase(110) == {"a": 105, "b": 5}


def test_round_robin_over_three_models():
  s = Schedule(cycle=[("a", 1), ("b", 1), ("c", 1)])
  assert [s.position(u).phase.name for u in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
  assert s.names == ["a", "b", "c"]


def test_micro_batch_offsets_count_each_phases_k():
  s = Schedule(warmup=[("a", 2, 3)], cycle=[("a", 2, 4), ("b", 1)], micro_batches=1)
  per_update = [s.position(u).phase.micro_batches for u in range(20)]
  for u in range(20):
    assert s.micro_batches_before(u) == sum(per_update[:u])


def test_default_micro_batches_apply_to_phases_without_their_own():
  s = Schedule(cycle=[("a", 1), ("b", 1, 2)], micro_batches=4)
  assert s.phases == (Entry("a", 1, 4), Entry("b", 1, 2))


@pytest.mark.parametrize("cycle, message", [
    ([], "empty"),
    ([("a", 0)], "updates must be a positive integer"),
    ([("a", 1, -2)], "micro_batches must be a positive integer"),
    ([("a",)], "an entry is"),
    ([(3, 1)], "name must be a string"),
])
def test_bad_schedules_say_what_to_change(cycle, message):
  with pytest.raises(UserError, match=message):
    Schedule(cycle=cycle)


def test_a_warmup_that_is_not_a_multiple_of_the_cycle_shifts_it_by_its_length():
  s = Schedule(warmup=[("a", 3)], cycle=[("a", 1), ("b", 1)])
  assert [s.position(u).phase.name for u in range(9)] == ["a", "a", "a", "a", "b", "a", "b", "a", "b"]
  assert [s.position(u).index for u in range(6)] == [0, 0, 0, 1, 2, 1]
  assert [s.position(u).updates_left for u in range(4)] == [3, 2, 1, 1]
  assert s.updates_per_phase(9) == {"a": 6, "b": 3}
  assert [s.micro_batches_before(u) for u in (0, 3, 4, 9)] == [0, 3, 4, 9]


def test_every_runs_a_phase_in_every_nth_cycle_only_and_positions_stay_a_function_of_the_update():
  s = Schedule(cycle=[("d_main", 1), ("d_reg", 1), ("g_main", 1)], every={"d_reg": 4}, warmup=[("g_main", 1)])
  names = [s.position(u).phase.name for u in range(1 + 2 * 9 + 3)]
  lazy_cycle = ["d_main", "g_main"]
  assert names == ["g_main"] + 2 * (["d_main", "d_reg", "g_main"] + 3 * lazy_cycle) + ["d_main", "d_reg", "g_main"]
  assert s.cycle_updates == 9 and s.updates_per_phase(1 + 18) == {"g_main": 9, "d_main": 8, "d_reg": 2}
  assert [s.cycle_position(u) for u in (1, 4, 9, 10)] == [0, 3, 8, 0]
  assert "every={'d_reg': 4}" in repr(s)


def test_a_phase_own_micro_batches_apply_where_the_entry_gives_none():
  s = Schedule(cycle=[("a", 1), ("b", 1, 2), ("c", 1)], micro_batches=3).with_phase_micro_batches({"a": 5, "b": 7})
  assert [p.micro_batches for p in s.cycle] == [5, 2, 3]
  per_update = [s.position(u).phase.micro_batches for u in range(9)]
  assert [s.micro_batches_before(u) for u in range(9)] == [sum(per_update[:u]) for u in range(9)]


@pytest.mark.parametrize("every, message", [
    ({"z": 2}, r"Schedule.every names 'z', which is not an entry of Schedule.cycle"),
    ({"a": 0}, r"Schedule.every\['a'\] must be a positive integer"),
    ({"a": 2, "b": 3}, r"leaves no entry of Schedule.cycle running in every cycle"),
])
def test_bad_every_says_what_to_change(every, message):
  with pytest.raises(UserError, match=message):
    Schedule(cycle=[("a", 1), ("b", 1)], every=every)
