"""The baseline's weights depend on its config alone, not on the caller's thread count."""

import dataclasses

import torch
from tiny_task import TINY

from search.tasks.digits import DigitsTask

# a shorter tiny training: the thread count's effect shows within two epochs
SHORT = dataclasses.replace(TINY, epochs=2)


def _trained(config, cache_dir, caller_threads: int) -> dict[str, torch.Tensor]:
    previous = torch.get_num_threads()
    torch.set_num_threads(caller_threads)
    try:
        model = DigitsTask(config, cache_dir=cache_dir).build_model()
        assert torch.get_num_threads() == caller_threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(previous)
    return model.state_dict()


def test_baseline_is_the_same_whatever_threads_the_caller_runs(tmp_path):
    one = _trained(SHORT, tmp_path / "one", caller_threads=1)
    four = _trained(SHORT, tmp_path / "four", caller_threads=4)
    assert all(torch.equal(one[name], four[name]) for name in one)


def test_the_training_thread_count_is_part_of_the_baselines_identity(tmp_path):
    # why the count is pinned: trained on one thread or two, the weights differ, so the
    # count must name the cached file like everything else that shapes it
    single = dataclasses.replace(SHORT, train_threads=1)
    assert single.key() != SHORT.key()
    one = _trained(single, tmp_path, caller_threads=2)
    two = _trained(SHORT, tmp_path, caller_threads=2)
    assert any(not torch.equal(one[name], two[name]) for name in one)


def test_a_second_process_waits_for_the_baseline_being_trained_and_loads_it(tmp_path):
    import fcntl
    import threading

    from search.tasks.digits import build_network

    task = DigitsTask(SHORT, cache_dir=tmp_path)
    tmp_path.mkdir(exist_ok=True)
    built: list[dict[str, torch.Tensor]] = []
    with open(task.baseline_path.with_suffix(".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # "another process" is training it
        waiting = threading.Thread(target=lambda: built.append(task.build_model().state_dict()))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive()  # it waits rather than training a second copy
        torch.manual_seed(123)
        theirs = build_network(SHORT.model).state_dict()
        torch.save(theirs, task.baseline_path)
        fcntl.flock(handle, fcntl.LOCK_UN)
    waiting.join(timeout=30)
    assert all(torch.equal(built[0][name], theirs[name]) for name in theirs)
