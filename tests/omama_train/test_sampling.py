"""Hard-negative adjacent mining (docs/reference.md, section 6) as pure functions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omama_train.sampling import (
    GT_SLOT,
    PAD_SLOT,
    Adjacency,
    best_overlap,
    box_iou,
    candidate_adjacency,
    centroids,
    delaunay_neighbours,
    landscape_size,
    order2_adjacency,
    sample_rng,
    sample_slots,
    select_negatives,
)


def path_graph(n: int) -> Adjacency:
    return Adjacency.from_sets([{j for j in (i - 1, i + 1) if 0 <= j < n} for i in range(n)])


def test_landscape_rule_swaps_portrait_sizes_only():
    assert landscape_size((960, 540)) == (540, 960)  # a portrait exo frame
    assert landscape_size((540, 960)) == (540, 960)
    assert landscape_size((704, 704)) == (704, 704)


def test_centroids_from_projections_and_empty_masks_take_their_box_centre():
    masks = np.zeros((3, 10, 20), np.uint8)
    masks[0, 2:4, 5:9] = 1  # rows 2-3, columns 5-8
    masks[1, 9, 19] = 1
    boxes = np.array([[5, 2, 3, 1], [19, 9, 0, 0], [4, 6, 2, 2]], np.float32)
    out = centroids(masks, boxes)
    np.testing.assert_allclose(out, [[6.5, 2.5], [19.0, 9.0], [5.0, 7.0]])
    np.testing.assert_allclose(centroids(masks[2:])[0], [9.5, 4.5])  # no boxes: image centre


def test_box_iou_and_the_anchor_rule():
    gt = np.array([0, 0, 10, 10])
    boxes = np.array([[5, 5, 10, 10], [0, 0, 10, 10], [20, 20, 1, 1], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(box_iou(gt, boxes), [25 / 175, 1.0, 0.0, 1.0])
    assert best_overlap(gt, boxes) == 1  # the best overlap, ties to the lowest index
    far = np.array([[50, 50, 4, 4], [12, 3, 2, 2], [0, 40, 2, 2]], float)
    assert best_overlap(gt, far) == 1  # nothing overlaps: nearest box centre
    assert best_overlap(gt, np.zeros((0, 4))) == -1
    degenerate = np.zeros((2, 4))
    np.testing.assert_allclose(box_iou(np.zeros(4), degenerate), [0.0, 0.0])


def test_delaunay_of_a_square_with_its_centre():
    points = np.array([[0, 0], [10, 0], [10, 10], [0, 10], [5, 5]], float)
    sets = delaunay_neighbours(points).to_sets()
    assert sets[4] == {0, 1, 2, 3}
    for corner in range(4):  # adjacent corners and the centre, never the opposite corner
        assert sets[corner] == {(corner - 1) % 4, (corner + 1) % 4, 4}
    second = order2_adjacency(delaunay_neighbours(points)).to_sets()
    assert all(s == set(range(5)) - {i} for i, s in enumerate(second))


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_few_candidates_neighbour_each_other(n):
    sets = delaunay_neighbours(np.arange(2 * n, dtype=float).reshape(n, 2)).to_sets()
    assert sets == [set(range(n)) - {i} for i in range(n)]


def test_collinear_and_coincident_centroids_still_get_neighbours():
    line = np.stack([np.arange(6.0), 2.0 * np.arange(6.0)], axis=1)
    sets = delaunay_neighbours(line).to_sets()
    assert sets == [{1}, {0, 2}, {1, 3}, {2, 4}, {3, 5}, {4}]  # exactly the path
    twins = np.array([[0, 0], [10, 0], [0, 10], [10, 10], [10, 10], [3, 4]], float)
    sets = delaunay_neighbours(twins).to_sets()
    assert 4 in sets[3] and sets[3] - {4} == sets[4] - {3} and sets[3] - {4}
    assert all(i in sets[j] for i, s in enumerate(sets) for j in s)  # symmetric
    same = delaunay_neighbours(np.ones((4, 2))).to_sets()
    assert same == [set(range(4)) - {i} for i in range(4)]


def test_order2_is_neighbours_and_their_neighbours():
    sets = order2_adjacency(path_graph(5)).to_sets()
    assert sets == [{1, 2}, {0, 2, 3}, {0, 1, 3, 4}, {1, 2, 4}, {2, 3}]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=4, max_size=25))
def test_adjacency_is_symmetric_connected_and_order2_is_its_square(raw):
    points = np.array(raw, float)
    first = delaunay_neighbours(points).to_sets()
    n = len(points)
    for i, s in enumerate(first):
        assert i not in s and all(i in first[j] for j in s)
    seen, todo = {0}, [0]  # connected, duplicates and collinear points included
    while todo:
        for j in first[todo.pop()] - seen:
            seen.add(j)
            todo.append(j)
    assert seen == set(range(n))
    for i, j in itertools.combinations(range(n), 2):
        if raw[i] == raw[j]:  # coincident centroids neighbour each other and share the rest
            assert j in first[i] and first[i] - {j} == first[j] - {i}
    second = candidate_adjacency(points).to_sets()
    for i in range(n):
        assert second[i] == (first[i] | set().union(*(first[j] for j in first[i]))) - {i}


def test_negatives_come_from_the_anchor_neighbourhood_then_random():
    adjacency = path_graph(10)
    order2 = order2_adjacency(adjacency)  # anchor 5 -> {3, 4, 6, 7}
    rng = np.random.default_rng(0)
    few = select_negatives(rng, 10, order2, anchor=5, count=3)
    assert len(set(few.tolist())) == 3 and set(few.tolist()) <= {3, 4, 6, 7}
    more = select_negatives(rng, 10, order2, anchor=5, count=7)
    assert len(set(more.tolist())) == 7 and 5 not in more
    assert set(more[:4].tolist()) == {3, 4, 6, 7}  # the whole neighbourhood, then top-up
    everything = select_negatives(rng, 10, order2, anchor=5, count=31)
    assert sorted(everything.tolist()) == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # never the anchor
    no_anchor = select_negatives(rng, 4, order2_adjacency(path_graph(4)), anchor=-1, count=31)
    assert sorted(no_anchor.tolist()) == [0, 1, 2, 3]


def test_visible_sample_places_the_ground_truth_at_a_random_valid_slot():
    order2 = order2_adjacency(path_graph(40))
    positions = set()
    for seed in range(60):
        plan = sample_slots(np.random.default_rng(seed), 40, order2, anchor=20, visible=True)
        assert plan.visible and plan.valid.all() and len(plan.source) == 32
        assert plan.source[plan.positive] == GT_SLOT and (plan.source == GT_SLOT).sum() == 1
        negatives = plan.source[plan.source >= 0]
        assert len(set(negatives.tolist())) == 31 and 20 not in negatives
        assert {18, 19, 21, 22} <= set(negatives.tolist())
        positions.add(plan.positive)
    assert len(positions) > 20  # spread over the slots, not a fixed index


def test_fewer_candidates_than_slots_pad_instead_of_repeating():
    plan = sample_slots(np.random.default_rng(1), 5, order2_adjacency(path_graph(5)), 2, True)
    assert plan.valid.sum() == 5  # the GT and the 4 non-anchor candidates
    assert (plan.source[5:] == PAD_SLOT).all() and not plan.valid[5:].any()
    assert sorted(plan.source[:5].tolist()) == [GT_SLOT, 0, 1, 3, 4]
    assert plan.positive < 5


def test_invisible_sample_has_random_candidates_and_no_loss_weight():
    plan = sample_slots(np.random.default_rng(2), 50, order2_adjacency(path_graph(50)), -1, False)
    assert not plan.visible and plan.valid.all()
    assert len(set(plan.source.tolist())) == 32 and (plan.source >= 0).all()
    small = sample_slots(np.random.default_rng(3), 3, order2_adjacency(path_graph(3)), -1, False)
    assert small.valid.sum() == 3 and sorted(small.source[:3].tolist()) == [0, 1, 2]
    assert small.positive < 3
    empty = sample_slots(np.random.default_rng(4), 0, Adjacency.from_sets([]), -1, False)
    assert empty.valid.tolist() == [True] + [False] * 31 and empty.positive == 0


def test_visible_object_in_a_frame_without_candidates_is_the_ground_truth_alone():
    plan = sample_slots(np.random.default_rng(5), 0, Adjacency.from_sets([]), -1, True, n=4)
    assert plan.source.tolist() == [GT_SLOT, PAD_SLOT, PAD_SLOT, PAD_SLOT]
    assert plan.positive == 0 and plan.valid.tolist() == [True, False, False, False]


def test_sampling_is_a_function_of_seed_epoch_and_index():
    order2 = order2_adjacency(path_graph(60))

    def plan(seed, epoch, index):
        p = sample_slots(sample_rng(seed, epoch, index), 60, order2, 30, True)
        return p.source.tolist(), p.positive

    assert plan(42, 0, 7) == plan(42, 0, 7)
    others = [plan(42, 1, 7), plan(42, 0, 8), plan(43, 0, 7)]
    assert all(o != plan(42, 0, 7) for o in others)
    with pytest.raises(Exception, match="must be >= 1"):
        sample_slots(np.random.default_rng(0), 3, path_graph(3), 0, True, n=0)


def test_adjacency_csr_round_trip():
    sets = [{1, 2}, {0}, {0}, set()]
    adjacency = Adjacency.from_sets(sets)
    assert adjacency.indptr.tolist() == [0, 2, 3, 4, 4] and len(adjacency) == 4
    assert adjacency.to_sets() == sets
    assert list(itertools.chain(adjacency.neighbours(0))) == [1, 2]
