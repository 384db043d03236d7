"""map_sequences: the plain loop's results, in order, with the caller's torch state, and torch's threads restored."""

from __future__ import annotations

import threading

import pytest
import torch

from scfmkit.models._cpu_threads import map_sequences


def test_results_in_order_and_threads_restored():
    before = torch.get_num_threads()
    names = set()

    def f(i):
        names.add(threading.current_thread().name)
        assert torch.get_num_threads() == 1
        return torch.full((i + 1,), float(i)).sum().item()

    assert map_sequences(f, list(range(20)), n_threads=2) == [float(i * (i + 1)) for i in range(20)]
    assert torch.get_num_threads() == before
    assert all(n.startswith("scfmkit-seq") for n in names)


def test_one_thread_or_one_item_is_the_plain_loop():
    main = threading.current_thread().name
    seen = []
    map_sequences(lambda i: seen.append(threading.current_thread().name), [1, 2, 3], n_threads=1)
    map_sequences(lambda i: seen.append(threading.current_thread().name), [1], n_threads=2)
    assert seen == [main] * 4


def test_workers_run_under_the_callers_torch_state():
    def state(_):
        return (
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
            torch.is_autocast_enabled("cpu"),
            torch.get_autocast_dtype("cpu"),
        )

    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = map_sequences(state, [0, 1, 2], n_threads=2)
    assert set(got) == {(False, True, True, torch.bfloat16)}
    with torch.no_grad():
        got = map_sequences(state, [0, 1], n_threads=2)
    assert {g[:3] for g in got} == {(False, False, False)}


def test_an_error_propagates_and_threads_are_restored():
    before = torch.get_num_threads()

    def f(i):
        if i == 3:
            msg = "bad cell"
            raise ValueError(msg)
        return i

    with pytest.raises(ValueError, match="bad cell"):
        map_sequences(f, list(range(6)), n_threads=2)
    assert torch.get_num_threads() == before
