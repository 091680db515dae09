"""The decode thread count is chosen by measurement (engine/threads.py): the tuner's decisions on
given step times. No clock is involved: the step times are the test's."""

from chatterm.engine.threads import PERIOD, PROBE, ThreadTuner


def run(tuner: ThreadTuner, seconds_at: dict[int, float], steps: int) -> list[int]:
    used = []
    for _ in range(steps):
        n = tuner.threads()
        used.append(n)
        tuner.record(seconds_at[n])
    return used


def test_a_busy_core_makes_it_drop_a_thread_and_a_quiet_one_brings_it_back():
    tuner = ThreadTuner(2)
    busy = {2: 0.30, 1: 0.08}  # one core busy: the second thread waits at every barrier
    used = run(tuner, busy, PERIOD + PROBE + 10)
    assert used[0] == 2 and tuner.current == 1 and used[-1] == 1
    quiet = {2: 0.04, 1: 0.08}
    run(tuner, quiet, 3 * (PERIOD + PROBE))
    assert tuner.current == 2


def test_a_probe_that_is_not_clearly_faster_changes_nothing():
    tuner = ThreadTuner(4)
    times = {4: 0.050, 3: 0.048, 5: 0.01}  # 3 threads only 4% faster: within the margin; 5 is over the maximum
    used = run(tuner, times, 5 * (PERIOD + PROBE))
    assert tuner.current == 4 and max(used) == 4 and used.count(3) <= 5 * PROBE


def test_one_thread_never_probes_below_one():
    tuner = ThreadTuner(1)
    assert set(run(tuner, {1: 0.01}, 3 * PERIOD)) == {1}
