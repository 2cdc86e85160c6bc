"""Hard-negative adjacent mining: which destination masks a training sample shows the matcher.

docs/reference.md, section 6, as pure functions (numpy + scipy, no torch):

- Every candidate mask of a destination frame gets a centroid; the Delaunay triangulation of
  the centroids gives each candidate its neighbours, and order 2 adds the neighbours of the
  neighbours (:func:`centroids`, :func:`delaunay_neighbours`, :func:`order2_adjacency`).
  This depends only on the candidate file, so it is computed once and cached
  (``omama_train.dataset``).
- Visible object: slot 0 of the sample is the ground-truth mask itself; the negatives are the
  order-2 neighbours of the candidate whose box best overlaps the ground-truth box (the
  *anchor*), topped up with random candidates (:func:`select_negatives`). The positive goes
  to a random position (:func:`sample_slots`).
- Not visible: ``n`` random candidates, one of them the "positive" at a random position, with
  visibility 0 (no loss).
- Landscape rule: portrait images are resized to the landscape size (:func:`landscape_size`).

Decisions where the reference is silent (documented here, tested in
tests/omama_train/test_sampling.py):

- The anchor is never a negative. It is the candidate that best matches the ground truth (the
  ground-truth mask itself when the candidates are the annotation stand-ins), so showing it as
  a negative would punish the right answer.
- Fewer candidates than ``n``: the sample has fewer *valid* slots; the rest are padding slots
  (empty mask, zero box, ``valid=False``) that the loss masks out. Nothing is repeated, so no
  candidate counts twice in the softmax.
- No box overlaps the ground-truth box (IoU 0 everywhere): the anchor is the candidate whose
  box centre is nearest to the ground-truth box centre, instead of the arbitrary first
  candidate an argmax over zeros would give.
- Degenerate triangulations: coincident centroids are triangulated once and share their
  neighbours (and neighbour each other); with at most 3 distinct centroids every candidate
  neighbours every other; collinear centroids are linked along their line (their Delaunay
  graph); nearly collinear ones that Qhull refuses are joggled (``QJ``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import OmamaError

NUM_CANDIDATES = 32


# ----------------------------------------------------------------------------- geometry


def landscape_size(size_hw: tuple[int, int]) -> tuple[int, int]:
    """The landscape (H <= W) size of an image: portrait (H > W) sizes are swapped.

    The matcher's positional tables fix each view's token grid, so a portrait frame is
    resized (not rotated) to the landscape size of its view, as the reference does.
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    return (w, h) if h > w else (h, w)


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) ``x1, y1, w, h`` -> (N, 2) float64 ``x, y`` box centres."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes[:, :2] + boxes[:, 2:] / 2.0


def centroids(masks: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """Centroids of binary masks: (N, H, W) -> (N, 2) float64 ``x, y`` in pixels.

    Computed from the row and column projections (no coordinate grids). An empty mask takes
    its box centre when ``boxes`` (N, 4) is given, else the image centre.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise OmamaError(f"centroids expects (N, H, W) masks, got shape {masks.shape}")
    n, h, w = masks.shape
    fg = masks != 0
    row_counts = fg.sum(axis=2, dtype=np.int64)  # (N, H)
    col_counts = fg.sum(axis=1, dtype=np.int64)  # (N, W)
    area = row_counts.sum(axis=1)
    safe = np.maximum(area, 1)
    y = row_counts @ np.arange(h, dtype=np.float64) / safe
    x = col_counts @ np.arange(w, dtype=np.float64) / safe
    out = np.stack([x, y], axis=1)
    empty = area == 0
    if empty.any():
        fallback = (
            box_centres(boxes)[empty]
            if boxes is not None
            else np.array([[(w - 1) / 2.0, (h - 1) / 2.0]])
        )
        out[empty] = fallback
    return out.reshape(n, 2)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``x1, y1, w, h`` box (4,) with each of (N, 4) boxes -> (N,) float64.

    Boxes are continuous rectangles ``[x1, x1 + w] x [y1, y1 + h]``; two degenerate boxes
    (zero area) have IoU 0.
    """
    box = np.asarray(box, dtype=np.float64).reshape(4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    iy = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def best_overlap(gt_box: np.ndarray, boxes: np.ndarray) -> int:
    """Index of the candidate whose box best overlaps ``gt_box`` (the anchor), or -1 for none.

    Ties go to the lowest index; when no box overlaps, the nearest box centre wins.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return -1
    ious = box_iou(gt_box, boxes)
    if ious.max() > 0:
        return int(np.argmax(ious))
    distance = np.linalg.norm(box_centres(boxes) - box_centres(np.asarray(gt_box)[None]), axis=1)
    return int(np.argmin(distance))


# ----------------------------------------------------------------------------- adjacency


@dataclass(frozen=True)
class Adjacency:
    """Neighbour lists of N candidates in CSR form.

    Attributes:
        indptr: (N + 1,) int32; the neighbours of ``i`` are ``indices[indptr[i]:indptr[i+1]]``.
        indices: (E,) int32, sorted per candidate, never ``i`` itself.
    """

    indptr: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def neighbours(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    @classmethod
    def from_sets(cls, sets: list[set[int]]) -> Adjacency:
        counts = np.array([len(s) for s in sets], dtype=np.int64)
        indptr = np.zeros(len(sets) + 1, dtype=np.int32)
        indptr[1:] = np.cumsum(counts)
        indices = np.array([j for s in sets for j in sorted(s)], dtype=np.int32)
        return cls(indptr, indices)

    def to_sets(self) -> list[set[int]]:
        return [set(self.neighbours(i).tolist()) for i in range(len(self))]


def delaunay_neighbours(points: np.ndarray) -> Adjacency:
    """First-order neighbours of the Delaunay triangulation of (N, 2) points.

    Coincident points are triangulated once and share their neighbours (and neighbour each
    other). With at most 3 distinct points everyone neighbours everyone; collinear points
    are linked along their line, which is their Delaunay graph.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(points)
    if n == 0:
        return Adjacency.from_sets([])
    unique, group = np.unique(points, axis=0, return_inverse=True)
    group = group.reshape(-1)
    linked = _distinct_neighbours(unique)
    members: list[list[int]] = [[] for _ in range(len(unique))]
    for i, g in enumerate(group.tolist()):
        members[g].append(i)
    sets = []
    for i, g in enumerate(group.tolist()):
        near = set(members[g])
        for h in linked[g]:
            near.update(members[h])
        near.discard(i)
        sets.append(near)
    return Adjacency.from_sets(sets)


def _distinct_neighbours(points: np.ndarray) -> list[set[int]]:
    """Delaunay neighbours of distinct points (see :func:`delaunay_neighbours`)."""
    from scipy.spatial import Delaunay, QhullError

    n = len(points)
    if n <= 3:
        return [set(range(n)) - {i} for i in range(n)]
    centred = points - points.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    if singular[1] <= 1e-9 * max(singular[0], 1.0):  # collinear: a path along the line
        order = np.argsort(centred @ axes[0], kind="stable")
        sets: list[set[int]] = [set() for _ in range(n)]
        for a, b in zip(order[:-1].tolist(), order[1:].tolist(), strict=True):
            sets[a].add(b)
            sets[b].add(a)
        return sets
    try:
        tri = Delaunay(points)
    except QhullError:  # nearly collinear: Qhull's joggled input always triangulates
        tri = Delaunay(points, qhull_options="QJ")
    indptr, indices = tri.vertex_neighbor_vertices
    sets = [set(indices[indptr[i] : indptr[i + 1]].tolist()) - {i} for i in range(n)]
    # Points Qhull left out of every triangle (round-off) join their nearest vertex.
    for point, _, vertex in np.asarray(tri.coplanar, dtype=np.int64).reshape(-1, 3).tolist():
        sets[point] = (sets[vertex] | {vertex}) - {point}
        for j in sets[point]:
            sets[j].add(point)
    return sets


def order2_adjacency(first: Adjacency) -> Adjacency:
    """Neighbours and neighbours of neighbours (never the candidate itself)."""
    sets = first.to_sets()
    out = []
    for i, direct in enumerate(sets):
        reach = set(direct)
        for j in direct:
            reach |= sets[j]
        reach.discard(i)
        out.append(reach)
    return Adjacency.from_sets(out)


def candidate_adjacency(points: np.ndarray) -> Adjacency:
    """Order-2 Delaunay adjacency of candidate centroids (N, 2): what the sampler uses."""
    return order2_adjacency(delaunay_neighbours(points))


# ----------------------------------------------------------------------------- sampling


def select_negatives(
    rng: np.random.Generator,
    n_candidates: int,
    adjacency: Adjacency,
    anchor: int,
    count: int,
) -> np.ndarray:
    """Up to ``count`` distinct negative candidate indices for a visible object.

    The order-2 neighbours of ``anchor`` come first (a random subset when there are more
    than ``count``), then random other candidates top them up. The anchor itself is never
    chosen. Returns (k,) int64 with k = min(count, n_candidates - 1) (or n_candidates when
    there is no anchor, ``anchor == -1``).
    """
    if count <= 0 or n_candidates <= 0:
        return np.zeros(0, dtype=np.int64)
    if anchor >= 0:
        near = adjacency.neighbours(anchor).astype(np.int64)
    else:
        near = np.zeros(0, dtype=np.int64)
    if len(near) >= count:
        return rng.permutation(near)[:count]
    chosen = np.zeros(n_candidates, dtype=bool)
    chosen[near] = True
    if anchor >= 0:
        chosen[anchor] = True
    rest = np.flatnonzero(~chosen)
    top_up = rng.permutation(rest)[: count - len(near)]
    return np.concatenate([rng.permutation(near), top_up]).astype(np.int64)


@dataclass(frozen=True)
class SlotPlan:
    """Which mask fills each of the ``n`` slots of one training sample.

    Attributes:
        source: (n,) int64: ``-1`` the ground-truth mask, ``>= 0`` that candidate,
            ``-2`` padding (empty mask, not valid).
        valid: (n,) bool, False on padding slots (masked out of the loss).
        positive: index of the positive slot.
        visible: whether the object is visible in the destination (loss weight 1 or 0).
    """

    source: np.ndarray
    valid: np.ndarray
    positive: int
    visible: bool


GT_SLOT = -1
PAD_SLOT = -2


def sample_slots(
    rng: np.random.Generator,
    n_candidates: int,
    adjacency: Adjacency,
    anchor: int,
    visible: bool,
    n: int = NUM_CANDIDATES,
) -> SlotPlan:
    """Plan the ``n`` destination slots of one sample (docs/reference.md, section 6).

    Visible: the ground-truth mask at a random valid position, up to ``n - 1`` negatives
    from :func:`select_negatives` around ``anchor``. Not visible: up to ``n`` random distinct
    candidates, one of them (random) the positive with visibility 0; with no candidate at
    all, slot 0 is a valid empty "positive" so the sample stays well defined.
    Valid slots come first, padding last.
    """
    if n < 1:
        raise OmamaError(f"the number of destination masks per sample must be >= 1, got {n}")
    source = np.full(n, PAD_SLOT, dtype=np.int64)
    if visible:
        negatives = select_negatives(rng, n_candidates, adjacency, anchor, n - 1)
        k = len(negatives) + 1
        positive = int(rng.integers(k))
        source[:k] = np.insert(negatives, positive, GT_SLOT)
    else:
        k = min(n, n_candidates)
        source[:k] = rng.permutation(n_candidates)[:k]
        if k == 0:
            k = 1  # an empty mask: the loss ignores it (visibility 0) but shapes stay valid
        positive = int(rng.integers(k))
    valid = np.zeros(n, dtype=bool)
    valid[:k] = True
    return SlotPlan(source, valid, positive, bool(visible))


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of (seed, epoch, sample index).

    Samples therefore do not depend on the number of data-loader workers, on which worker
    draws them, or on the DDP rank: a resumed or re-sharded run sees the same negatives.
    """
    return np.random.default_rng([int(seed), int(epoch), int(index)])
