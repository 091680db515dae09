"""The decode thread count is chosen by measurement (engine/threads.py): the tuner's decisions on
given step times. No clock is involved: the step times are the test's."""

from chatterm.engine.threads import MAX_WAIT_S, PERIOD, PROBE, ThreadTuner


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


def test_probes_that_change_nothing_come_ever_more_rarely():
    """Each losing probe costs slow steps: on a steady machine the waits double, up to about
    MAX_WAIT_S of decoding, so a long reply pays for few of them."""
    tuner = ThreadTuner(2)
    step = 0.005
    used = run(tuner, {2: step, 1: 2 * step}, 4000)
    probes = used.count(1) // PROBE
    assert 4 <= probes <= 7  # a probe every 64 steps would be 58
    starts = [i for i in range(1, len(used)) if used[i] == 1 and used[i - 1] == 2]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == sorted(gaps) and gaps[-1] <= MAX_WAIT_S / step + PROBE + 1


def test_a_load_change_probes_at_once_however_long_the_wait():
    tuner = ThreadTuner(2)
    run(tuner, {2: 0.005, 1: 0.010}, 3000)  # quiet for long: the next probe is hundreds of steps away
    used = run(tuner, {2: 0.030, 1: 0.012}, 2 * PROBE + 2)  # a core gets busy
    assert 1 in used and tuner.current == 1


def test_one_thread_never_probes_below_one():
    tuner = ThreadTuner(1)
    assert set(run(tuner, {1: 0.01}, 3 * PERIOD)) == {1}


def test_a_reply_gives_the_process_its_threads_back(parrot_checkpoint):
    """Whatever the tuner picked for the decode steps, the next prompt and the next model start
    from the process's own count."""
    import torch

    from chatterm.engine.settings import SamplingSettings
    from chatterm.session.backends.local import LocalBackend

    generator = LocalBackend.load(parrot_checkpoint).generator
    generator._threads.current = 1  # as after a busy spell
    generator.complete([1, 2, 3], SamplingSettings(temperature=0, max_new_tokens=4))
    # OpenMP's count is per thread: this one ran the decode steps, and has the maximum back
    assert torch.get_num_threads() == generator._threads.maximum
