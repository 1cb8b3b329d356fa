"""trainer.schedule: positions, micro-batch offsets and validation."""

import pytest

from trainer.errors import UserError
from trainer.schedule import Phase, Schedule


def test_critic_5_generator_1():
  s = Schedule(cycle=[("critic", 5), ("generator", 1)])
  models = [s.position(u).phase.model for u in range(12)]
  assert models == ["critic"] * 5 + ["generator"] + ["critic"] * 5 + ["generator"]
  assert s.updates_per_model(12) == {"critic": 10, "generator": 2}
  assert s.position(7).updates_left == 4  # update 7 is the 2nd critic update of the 2nd cycle


def test_warmup_then_alternation():
  s = Schedule(warmup=[("a", 100)], cycle=[("a", 1), ("b", 1)])
  assert [s.position(u).phase.model for u in (0, 99, 100, 101, 102, 103)] == ["a", "a", "a", "b", "a", "b"]
  assert s.position(0).updates_left == 100
  assert s.updates_per_model(110) == {"a": 105, "b": 5}


def test_round_robin_over_three_models():
  s = Schedule(cycle=[("a", 1), ("b", 1), ("c", 1)])
  assert [s.position(u).phase.model for u in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]
  assert s.models == ["a", "b", "c"]


def test_micro_batch_offsets_count_each_phases_k():
  s = Schedule(warmup=[("a", 2, 3)], cycle=[("a", 2, 4), ("b", 1)], micro_batches=1)
  per_update = [s.position(u).phase.micro_batches for u in range(20)]
  for u in range(20):
    assert s.micro_batches_before(u) == sum(per_update[:u])


def test_default_micro_batches_apply_to_phases_without_their_own():
  s = Schedule(cycle=[("a", 1), ("b", 1, 2)], micro_batches=4)
  assert s.phases == (Phase("a", 1, 4), Phase("b", 1, 2))


@pytest.mark.parametrize("cycle, message", [
    ([], "empty"),
    ([("a", 0)], "updates must be a positive integer"),
    ([("a", 1, -2)], "micro_batches must be a positive integer"),
    ([("a",)], "a phase is"),
    ([(3, 1)], "model name must be a string"),
])
def test_bad_schedules_say_what_to_change(cycle, message):
  with pytest.raises(UserError, match=message):
    Schedule(cycle=cycle)


def test_a_warmup_that_is_not_a_multiple_of_the_cycle_shifts_it_by_its_length():
  s = Schedule(warmup=[("a", 3)], cycle=[("a", 1), ("b", 1)])
  assert [s.position(u).phase.model for u in range(9)] == ["a", "a", "a", "a", "b", "a", "b", "a", "b"]
  assert [s.position(u).index for u in range(6)] == [0, 0, 0, 1, 2, 1]
  assert [s.position(u).updates_left for u in range(4)] == [3, 2, 1, 1]
  assert s.updates_per_model(9) == {"a": 6, "b": 3}
  assert [s.micro_batches_before(u) for u in (0, 3, 4, 9)] == [0, 3, 4, 9]
