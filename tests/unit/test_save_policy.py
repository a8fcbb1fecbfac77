"""SavePolicy: each rule that makes a step a checkpoint, decided without processes or real time
(a fake clock; `agree` stands in for the all-reduce that shares rank 0's verdict)."""

from __future__ import annotations

from trainer.checkpointing.save_policy import SavePolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_rule_configured_saves_nothing() -> None:
    policy = SavePolicy(clock=FakeClock())
    assert not any(policy.should_save(step) for step in range(1, 50))


def test_every_steps_saves_multiples_only() -> None:
    policy = SavePolicy(every_steps=3, clock=FakeClock())
    assert [step for step in range(1, 11) if policy.should_save(step)] == [3, 6, 9]


def test_every_minutes_counts_from_start_and_from_the_last_save() -> None:
    clock = FakeClock()
    policy = SavePolicy(every_minutes=2.0, clock=clock)
    clock.now += 119.0
    assert not policy.should_save(1)
    clock.now += 1.0  # 120 s since the policy was made
    assert policy.should_save(2)
    assert policy.should_save(3)  # still due: nothing was saved yet
    policy.saved()
    assert not policy.should_save(4)
    clock.now += 120.0
    assert policy.should_save(5)


def test_time_rule_is_rank_zeros_clock_shared_through_agree() -> None:
    clock, verdicts = FakeClock(), []

    def agree(due: bool) -> bool:  # the all-reduce: another rank's clock is past the interval
        verdicts.append(due)
        return True

    other = SavePolicy(every_minutes=1.0, is_main=False, agree=agree, clock=clock)
    clock.now += 3600.0
    assert other.should_save(1)  # saves because rank 0 said so ...
    assert verdicts == [False]  # ... though a non-main rank never votes for time itself
    main = SavePolicy(every_minutes=1.0, agree=lambda due: due, clock=clock)
    assert not main.should_save(1)
    clock.now += 60.0
    assert main.should_save(2)


def test_time_rule_off_runs_no_collective() -> None:
    def agree(due: bool) -> bool:
        raise AssertionError("agree called with every_minutes=0")

    assert not SavePolicy(every_steps=0, every_minutes=0.0, agree=agree, clock=FakeClock()).should_save(7)


def test_step_rule_short_circuits_the_collective_on_every_rank_alike() -> None:
    calls = []
    policy = SavePolicy(every_steps=2, every_minutes=1.0, agree=lambda due: calls.append(due) or due, clock=FakeClock())
    assert policy.should_save(2) and calls == []  # decided by the step: no all-reduce this step
    assert not policy.should_save(3) and calls == [False]


def test_transfer_must_save_the_best_step() -> None:
    best_steps = {4, 9}
    policy = SavePolicy(every_steps=5, must_save=lambda step: step in best_steps, clock=FakeClock())
    assert [step for step in range(1, 11) if policy.should_save(step)] == [4, 5, 9, 10]


def test_a_stop_request_saves_whatever_the_schedule() -> None:
    policy = SavePolicy(every_steps=100, clock=FakeClock())
    assert not policy.should_save(7)
    assert policy.should_save(7, stop_requested=True)
