"""The training clock: evaluation inside paused() does not count against train.time_limit."""
import time

import torch

from ditlab.train.clock import TrainingClock


def test_paused_time_is_excluded_and_untimed_steps_are_not_counted():
    clock = TrainingClock(limit=10.0, untimed=1, device=torch.device("cpu"))
    with clock.paused():  # before the clock starts: nothing to exclude
        pass
    assert not clock.tick(0) and clock.start is None and clock.elapsed() == 0.0
    assert not clock.tick(1)  # the clock starts here
    with clock.paused():
        time.sleep(0.2)
    assert clock.excluded >= 0.2
    assert clock.elapsed() < 0.1  # the 0.2 s inside paused() are not training time
    time.sleep(0.05)
    assert 0.05 <= clock.used() < 0.15


def test_time_limit_is_reached_by_training_time_only():
    clock = TrainingClock(limit=0.1, untimed=0, device=torch.device("cpu"))
    clock.tick(0)
    with clock.paused():
        time.sleep(0.15)
    assert not clock.tick(1)  # 0.15 s passed, all of it paused
    time.sleep(0.11)
    assert clock.tick(2)


def test_a_resumed_clock_counts_the_earlier_segments():
    clock = TrainingClock(limit=0.1, untimed=1, device=torch.device("cpu"), offset=0.08)
    assert clock.used() == clock.elapsed() == 0.08  # before the clock starts: the earlier segments
    assert not clock.tick(0) and not clock.tick(1)
    time.sleep(0.03)
    assert clock.tick(2)  # 0.08 + 0.03 >= 0.1: the run's budget, not a new one


def test_the_clock_stands_still_inside_paused():
    """What an evaluation reads after its own work is the training time at which it began: the time-to-FID
    curve's seconds (read after the FID is computed) must not include that evaluation's duration."""
    clock = TrainingClock(limit=0.0, untimed=0, device=torch.device("cpu"))
    clock.tick(0)
    time.sleep(0.05)
    with clock.paused():
        at_start = clock.elapsed()
        time.sleep(0.2)  # the evaluation
        assert clock.elapsed() == at_start
    assert at_start < clock.elapsed() < at_start + 0.1  # running again, without the 0.2 s
