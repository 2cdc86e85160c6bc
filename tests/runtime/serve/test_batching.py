"""One batch of requests through one pipeline, without Ray: each destination frame is
encoded once, each (source, destination) pair gets one matcher call, the answers equal
``Pipeline.match_frame``'s, and a refused frame costs only its own requests."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from runtime import rle  # noqa: E402
from runtime.candidates import Candidates  # noqa: E402
from runtime.pipeline import STAGES, Pipeline  # noqa: E402
from runtime.serve.batching import BatchCounters, group_batch, run_batch  # noqa: E402
from runtime.serve.protocol import MatchRequest, RequestError, check_match  # noqa: E402


@pytest.fixture(scope="module")
def pipe(assets):
    with Pipeline(assets.random, backend="onnxruntime", device="cpu", threads=1) as pipe:
        yield pipe


def request(src, dst, queries, src_key="s", dst_key="d", candidates=None) -> MatchRequest:
    return MatchRequest(src, dst, list(queries), candidates, src_key=src_key, dst_key=dst_key)


def test_grouping_is_by_destination_then_source_in_arrival_order():
    a = np.zeros((1, 1, 3), np.uint8)
    batch = [request(a, a, [], "s1", "d1"), request(a, a, [], "s2", "d2"),
             request(a, a, [], "s1", "d1"), request(a, a, [], "s2", "d1")]  # fmt: skip
    assert group_batch(batch) == {"d1": {"s1": [0, 2], "s2": [3]}, "d2": {"s2": [1]}}


def test_a_batch_encodes_each_destination_once_and_answers_as_match_frame(pipe, frames):
    src, dst, queries, _ = frames
    masks = list(queries.values())
    other_dst = np.ascontiguousarray(dst[::-1])  # another destination frame, same size
    batch = [
        request(src, dst, masks[:1]),
        request(src, dst, masks[1:2] or masks[:1]),
        request(src, other_dst, masks[:1], dst_key="d2"),
    ]
    counters = BatchCounters()
    answers = run_batch(pipe, batch, counters)
    assert counters.to_json() == {"requests": 3, "batches": 1, "dst_encodes": 2,
                                  "src_encodes": 2, "matcher_calls": 2}  # fmt: skip
    assert [a["batch"] for a in answers] == [
        {"shared_src": 2, "requests": 3, "shared_dst": 2},
        {"shared_src": 2, "requests": 3, "shared_dst": 2},
        {"shared_src": 1, "requests": 3, "shared_dst": 1},
    ]
    for item, answer in zip(batch, answers, strict=True):
        alone = pipe.match_frame(item.src_rgb, item.dst_rgb, item.queries)
        assert len(answer["objects"]) == len(alone) == 1
        got, want = answer["objects"][0], alone[0]
        assert got["rle"] == rle.encode(want.mask) and got["candidate"] == want.candidate
        assert got["confidence"] == pytest.approx(want.confidence, abs=1e-6)
        assert got["mask_size_hw"] == list(dst.shape[:2])
        assert set(answer["latency_ms"]) == {*STAGES, "total", "queue"}
        assert answer["latency_ms"]["backbone_dst"] > 0 and answer["latency_ms"]["matcher"] > 0


def test_a_refused_destination_fails_only_its_own_requests(pipe, frames):
    src, dst, queries, _ = frames
    mask = next(iter(queries.values()))
    wrong = Candidates.from_masks(np.ones((1, 10, 40), np.uint8))  # 4:1, the frame is 1:1
    batch = [request(src, dst, [mask], dst_key="bad", candidates=wrong),
             request(src, dst, [mask])]  # fmt: skip
    answers = run_batch(pipe, batch)
    assert isinstance(answers[0], RequestError) and answers[0].status == 422
    assert "candidate masks are 40x10 px" in str(answers[0])
    assert answers[1]["objects"][0]["candidate"] >= 0


def test_check_match_refuses_what_the_model_cannot_take(pipe, frames):
    src, dst, queries, _ = frames
    mask = next(iter(queries.values()))
    check_match(request(src, dst, [mask]), pipe)  # a good request passes
    small = mask[::2, ::2]  # the same aspect ratio at half the resolution: accepted
    check_match(request(src, dst, [small]), pipe)
    cases = [
        (request(src, dst, [mask, np.zeros_like(mask)]), "queries[1]: the query mask is empty"),
        (request(src, dst, [mask[:, : mask.shape[1] // 2]]), "queries[0]: the query mask is"),
        (request(dst, dst, [mask]), "src_image is 448x448 px"),
        (request(src, src, [mask]), "dst_image is 896x504 px"),
    ]
    for item, words in cases:
        with pytest.raises(RequestError, match=r"^" + words.replace("[", r"\[")) as info:
            check_match(item, pipe)
        assert info.value.status == 422


def test_a_replica_with_trust_opens_a_signed_folder_and_refuses_a_changed_one(assets, tmp_path):
    pytest.importorskip("model_signing", reason="signing is the omama[signing] extra")
    import shutil

    from runtime.errors import OmamaError
    from runtime.manifest.signing import sign_folder
    from runtime.serve.service import MatchService, ServeConfig
    from tests.signing_keys import write_key_pair

    folder = tmp_path / "artifacts"
    shutil.copytree(assets.random, folder)
    private, public = write_key_pair(tmp_path, "signer")
    sign_folder(folder, private)
    config = ServeConfig(str(folder), backend="onnxruntime", device="cpu", threads=1,
                         trust=str(public))  # fmt: skip
    service = MatchService(config)
    try:
        assert service.info()["signature"] == {"verified": True, "public_key": str(public)}
    finally:
        service.close()
    (folder / "extra.txt").write_text("added after signing")
    with pytest.raises(OmamaError):
        MatchService(config)


def test_a_bad_query_fails_only_its_own_request_among_those_sharing_its_frames(pipe, frames):
    """One matcher call serves a whole (source, destination) group; when it fails, each
    request is retried alone so that only the offending one gets the 422."""
    src, dst, queries, _ = frames
    mask = next(iter(queries.values()))
    batch = [request(src, dst, [mask]), request(src, dst, [mask, np.zeros_like(mask)]),
             request(src, dst, [mask])]  # fmt: skip
    counters = BatchCounters()
    answers = run_batch(pipe, batch, counters)
    assert isinstance(answers[1], RequestError) and answers[1].status == 422
    assert str(answers[1]).startswith("query 1: the query mask is empty")
    alone = pipe.match_frame(src, dst, [mask])[0]
    for answer in (answers[0], answers[2]):
        assert answer["objects"][0]["rle"] == rle.encode(alone.mask)
        assert answer["latency_ms"]["backbone_src"] > 0  # the shared encode still counts
    # One source encode; the group's call failed, then one call per good request.
    assert (counters.src_encodes, counters.matcher_calls) == (1, 2)


def test_a_replica_whose_batch_runs_past_the_health_timeout_is_unhealthy(assets, monkeypatch):
    """Serve restarts a replica whose check_health fails: a wedged batch must fail it."""
    import threading
    import time

    from runtime.errors import OmamaError
    from runtime.serve import service as service_module
    from runtime.serve.service import MatchService, ServeConfig

    release = threading.Event()
    monkeypatch.setattr(service_module, "run_batch", lambda *args: release.wait(10) and [])
    config = ServeConfig(str(assets.random), backend="onnxruntime", device="cpu", threads=1,
                         health_timeout_s=0.2)  # fmt: skip
    service = MatchService(config)
    try:
        service.check_health()  # idle: healthy
        worker = threading.Thread(target=service.run_batch, args=([],))
        worker.start()
        time.sleep(0.05)
        service.check_health()  # running, within the timeout
        time.sleep(0.3)
        with pytest.raises(OmamaError, match=r"a batch has been running for \d+\.\d s"):
            service.check_health()
        release.set()
        worker.join()
        service.check_health()  # the batch ended: healthy again
    finally:
        service.close()
