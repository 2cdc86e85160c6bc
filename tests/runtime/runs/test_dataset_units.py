"""The pieces of ``omama-run dataset`` that need neither models nor Ray: items, the images
packed for a Ray Data block, part validation, the resources asked of Ray, and the one line
a failed Ray job ends with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.egoexo import TakeObservation
from runtime.errors import OmamaError
from runtime.raykit import failure_line as _failure
from runtime.runs.dataset_jobs import Item, pack_images, take_items, unpack_images
from runtime.runs.dataset_parts import (
    RunSettings,
    part_path,
    read_part,
    take_inputs_sha256,
    write_part,
)
from runtime.runs.dataset_ray import worker_resources


def test_items_cut_a_take_into_frame_chunks_naming_only_the_images_they_read():
    observations = [TakeObservation(obj, cam, "aria01", frame)
                    for frame in (0, 2, 4, 6, 8) for cam in ("cam01", "cam02")
                    for obj in ("cup", "pan")]  # fmt: skip
    items = take_items("take", "exo2ego", observations, frames_per_item=2)
    assert [i.frames for i in items] == [(0, 2), (4, 6), (8,)]
    assert [(i.chunk, i.chunks) for i in items] == [(0, 3), (1, 3), (2, 3)]
    assert items[2].images == (("aria01", 8), ("cam01", 8), ("cam02", 8))
    assert Item.from_json(json.loads(json.dumps(items[0].to_json()))) == items[0]


def test_packed_images_come_back_identical_and_errors_stay_errors():
    rng = np.random.default_rng(0)
    images = {("cam01", 2): rng.integers(0, 255, (4, 7, 3), dtype=np.uint8),
              ("aria01", 2): "cannot read aria01/2.jpg",
              ("cam02", 2): rng.integers(0, 255, (5, 3, 3), dtype=np.uint8)}  # fmt: skip
    keys, pixels = pack_images(images)
    assert pixels.dtype == np.uint8 and pixels.shape == (4 * 7 * 3 + 5 * 3 * 3,)
    back = unpack_images(json.loads(json.dumps(keys)), pixels)
    assert back.keys() == images.keys()
    assert back[("aria01", 2)] == "cannot read aria01/2.jpg"
    for key in (("cam01", 2), ("cam02", 2)):
        np.testing.assert_array_equal(back[key], images[key])


def test_a_part_counts_only_when_complete_and_made_with_the_same_settings(tmp_path):
    settings = RunSettings("ab" * 32, "onnxruntime", "cpu", "fp32", "model", None, None)
    record = {"results": None, "gt": None, "frames": 3, "observations_total": 4,
              "observations": 4, "visible": 2, "no_candidates": 0, "precomputed_frames": 0,
              "fastsam_frames": 3, "skipped": {"count": 0, "listed": []}}  # fmt: skip
    inputs = "cd" * 32
    assert read_part(tmp_path, "t1", "exo2ego", settings, inputs) == (None, "missing")
    write_part(tmp_path, "t1", "exo2ego", settings, inputs, record)
    part, why = read_part(tmp_path, "t1", "exo2ego", settings, inputs)
    assert why == "done" and part["frames"] == 3
    other = RunSettings("ab" * 32, "onnxruntime", "cpu", "fp16", "model", None, None)
    assert read_part(tmp_path, "t1", "exo2ego", other, inputs) == (None, "other settings")
    # a re-prepared take (another annotation.json or split): predicted again
    assert read_part(tmp_path, "t1", "exo2ego", settings, "ef" * 32) == (None, "other inputs")
    path = part_path(tmp_path, "t1", "exo2ego")
    path.rename(part_path(tmp_path, "t2", "exo2ego"))  # a part under another take's name
    assert read_part(tmp_path, "t2", "exo2ego", settings, inputs) == (None, "unreadable")
    path.write_text(json.dumps({**json.loads(part_path(tmp_path, "t2", "exo2ego").read_text()),
                                "take": "t1"})[:-20])  # fmt: skip
    assert read_part(tmp_path, "t1", "exo2ego", settings, inputs) == (None, "unreadable")


def test_a_takes_inputs_are_its_annotation_bytes_and_its_splits(tmp_path):
    ann = tmp_path / "processed" / "t1" / "annotation.json"
    ann.parent.mkdir(parents=True)
    ann.write_text('{"masks": {}}')
    splits = {"test": ["t1", "t2"], "val": ["t3"]}
    first = take_inputs_sha256(tmp_path, "t1", splits)
    assert first == take_inputs_sha256(tmp_path, "t1", {**splits, "val": ["t4"]})
    assert first != take_inputs_sha256(tmp_path, "t1", {**splits, "val": ["t1"]})
    ann.write_text('{"masks": {} }')
    assert first != take_inputs_sha256(tmp_path, "t1", splits)
    ann.unlink()
    assert take_inputs_sha256(tmp_path, "t1", splits) not in (first, take_inputs_sha256(
        tmp_path, "t1", {}))  # fmt: skip


def test_workers_ask_ray_for_what_the_cluster_holds():
    two_cpus = {"CPU": 2.0}
    assert worker_resources(two_cpus, 2, None, None, "cpu") == (0.5, 0.0)
    assert worker_resources(two_cpus, 1, None, None, "auto") == (1.0, 0.0)
    assert worker_resources(two_cpus, 4, None, None, "cpu") == (0.25, 0.0)
    gpu_node = {"CPU": 16.0, "GPU": 8.0}
    assert worker_resources(gpu_node, 8, None, None, "auto") == (1.0, 1.0)
    assert worker_resources(gpu_node, 16, None, 0.5, "cuda") == (0.75, 0.5)
    with pytest.raises(OmamaError, match="need 9 GPUs but the Ray cluster has 8"):
        worker_resources(gpu_node, 9, None, None, "cuda")
    with pytest.raises(OmamaError, match="need 2.25 CPUs but the Ray cluster has 2"):
        worker_resources(two_cpus, 2, 1.0, None, "cpu")
    with pytest.raises(OmamaError, match="--device is cpu"):
        worker_resources(gpu_node, 1, None, 1.0, "cpu")


def test_cpu_workers_get_an_equal_share_of_the_cpus_and_as_many_threads():
    """On CPU-only nodes the models run on the actors' CPUs: one worker on 16 cores gets
    15 CPUs (one kept for reading frames) and 15 threads, not 1."""
    from runtime.raykit import threads_for

    node = {"CPU": 16.0}
    assert worker_resources(node, 1, None, None, "cpu") == (15.0, 0.0)
    assert worker_resources(node, 4, None, None, "auto") == (3.75, 0.0)
    assert threads_for(15.0) == 15 and threads_for(3.75) == 3 and threads_for(0.25) == 1
    # On CUDA the models run on the GPU: each worker keeps at most 1 CPU.
    assert worker_resources({"CPU": 16.0, "GPU": 2.0}, 2, None, None, "auto") == (1.0, 1.0)


def test_a_failed_ray_job_ends_with_the_workers_own_line():
    class ActorDiedError(Exception):  # Ray carries a worker's traceback as text
        pass

    died = ActorDiedError("The actor died because of an error raised in its creation task\n"
                          "  File 'x.py', line 1\nruntime.errors.OmamaError: the artifacts "
                          "differ\n")  # fmt: skip
    assert _failure(died) == "a Ray worker failed: the artifacts differ"
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = OmamaError("take t1 has no exo2ego observations")
    assert _failure(wrapped) == "a Ray worker failed: take t1 has no exo2ego observations"
    assert _failure(ValueError("lost\nmore")) == "the Ray job failed: ValueError: lost"


@pytest.mark.timeout(60)
def test_a_cluster_that_is_not_there_is_one_line_at_once():
    import socket

    from runtime.runs.dataset_ray import ray_connection

    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = pytest.raises(OmamaError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}")
    with refused, ray_connection(f"127.0.0.1:{port}"):
        pass
