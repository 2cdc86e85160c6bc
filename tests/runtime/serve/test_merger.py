"""Batches that wait while the model runs are merged into one (no Ray, no models): Ray
Serve 2.60's ``@serve.batch`` forms the next batch while one runs, so each batch would
hold only what arrived within its short wait window."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime.serve.batching import BatchMerger


def recording_run(calls: list, gate: threading.Event, fail: set = frozenset()):
    def run(items: list) -> list:
        calls.append(list(items))
        if items[0] == "a":
            assert gate.wait(10)  # "a" holds the model until the others are queued
        if fail & set(items):
            raise ValueError(f"bad batch {items}")
        return [f"{item}!" for item in items]

    return run


async def _submit_while_a_runs(merger: BatchMerger, gate: threading.Event, *later: list):
    first = asyncio.create_task(merger.submit(["a"]))
    await asyncio.sleep(0.1)
    tasks = [asyncio.create_task(merger.submit(items)) for items in later]
    await asyncio.sleep(0.1)
    gate.set()
    return await asyncio.gather(first, *tasks, return_exceptions=True)


@pytest.mark.timeout(30)
def test_batches_waiting_while_one_runs_run_next_as_one():
    calls, gate = [], threading.Event()
    merger = BatchMerger(recording_run(calls, gate), max_items=8)
    results = asyncio.run(_submit_while_a_runs(merger, gate, ["b", "c"], ["d"]))
    assert results == [["a!"], ["b!", "c!"], ["d!"]]
    assert calls == [["a"], ["b", "c", "d"]]


@pytest.mark.timeout(30)
def test_merged_batches_hold_at_most_max_items_in_arrival_order():
    calls, gate = [], threading.Event()
    merger = BatchMerger(recording_run(calls, gate), max_items=2)
    results = asyncio.run(_submit_while_a_runs(merger, gate, ["b", "c", "d"], ["e"]))
    assert results == [["a!"], ["b!", "c!", "d!"], ["e!"]]
    assert calls == [["a"], ["b", "c"], ["d", "e"]]


@pytest.mark.timeout(30)
def test_a_failing_batch_fails_its_requests_only():
    calls, gate = [], threading.Event()
    merger = BatchMerger(recording_run(calls, gate, fail={"c"}), max_items=2)
    results = asyncio.run(_submit_while_a_runs(merger, gate, ["b"], ["c"], ["d"]))
    assert results[0] == ["a!"] and results[3] == ["d!"]
    assert all(isinstance(r, ValueError) for r in results[1:3])
    assert calls == [["a"], ["b", "c"], ["d"]]


@pytest.mark.timeout(30)
def test_a_submitter_that_goes_away_neither_stops_nor_overlaps_the_calls():
    calls, gate, active, overlaps = [], threading.Event(), [0], []
    run = recording_run(calls, gate)

    def counted(items: list) -> list:
        active[0] += 1
        overlaps.append(active[0])
        try:
            return run(items)
        finally:
            active[0] -= 1

    merger = BatchMerger(counted, max_items=8)

    async def main():
        first = asyncio.create_task(merger.submit(["a"]))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(merger.submit(["b"]))
        await asyncio.sleep(0.05)
        first.cancel()  # its client left while "a" runs
        await asyncio.sleep(0.1)
        gate.set()
        return await second

    assert asyncio.run(main()) == ["b!"]
    assert calls == [["a"], ["b"]] and max(overlaps) == 1
