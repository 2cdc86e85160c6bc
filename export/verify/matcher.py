"""Parity of a matcher graph (descriptor pooling + matcher) with the torch backend."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.manifest import CheckRecord
from runtime.pooling import descriptor_weights, mask_boxes
from runtime.sessions import Session
from runtime.verification.compare import MatcherResult, compare_matcher
from runtime.verification.inputs import candidate_boxes, random_masks
from runtime.verification.tolerances import TOLERANCES


@dataclass(frozen=True)
class ViewGeometry:
    """Image size (H, W) px and token grid (h, w) of one view."""

    image_size: tuple[int, int]
    feat_grid: tuple[int, int]


@dataclass
class MatcherCase:
    """One matcher call: B source objects against N candidates of one frame pair."""

    src_feats: np.ndarray  # (1, D, hs, ws)
    dst_feats: np.ndarray  # (1, D, hd, wd)
    src_masks: np.ndarray  # (B, Hs, Ws) uint8
    src_boxes: np.ndarray  # (B, 4)
    dst_masks: np.ndarray  # (N, Hd, Wd) uint8
    dst_boxes: np.ndarray  # (N, 4)


class MatcherParity:
    """Parity of a matcher graph with the torch backend's pooling + matcher module.

    Cases: fixed shapes (B=1, N=1; B=2, N=7 with an empty candidate; B=1, N=``large_n``)
    and ``random_sets`` random candidate sets (B=1, N in 2..64). The reference of every case
    is computed once and reused for every session; inputs are regenerated from the seed
    (they can be large) rather than kept.
    """

    def __init__(
        self,
        reference: Session,
        dim: int,
        src: ViewGeometry,
        dst: ViewGeometry,
        matcher_input: str,
        random_sets: int = 200,
        large_n: int = 256,
        seed: int = 0,
    ) -> None:
        self.reference = reference
        self.dim = dim
        self.src, self.dst = src, dst
        self.matcher_input = matcher_input
        self.seed = seed
        self.shapes: list[tuple[int, int, tuple[int, ...]]] = [
            (1, 1, ()),
            (2, 7, (3,)),
            (1, large_n, ()),
        ]
        shape_rng = np.random.default_rng([seed, 1])
        self.shapes += [(1, int(shape_rng.integers(2, 65)), ()) for _ in range(random_sets)]
        self.n_fixed = 3
        self._reference: list[np.ndarray] = []

    def case(self, index: int) -> MatcherCase:
        batch, count, empty = self.shapes[index]
        rng = np.random.default_rng([self.seed, 2, index])
        src_masks = random_masks(rng, batch, self.src.image_size)
        dst_masks = random_masks(rng, count, self.dst.image_size, empty=empty)
        return MatcherCase(
            src_feats=rng.standard_normal((1, self.dim, *self.src.feat_grid), dtype=np.float32),
            dst_feats=rng.standard_normal((1, self.dim, *self.dst.feat_grid), dtype=np.float32),
            src_masks=src_masks,
            src_boxes=mask_boxes(src_masks),  # the query box is the mask's own box
            dst_masks=dst_masks,
            dst_boxes=candidate_boxes(rng, dst_masks),
        )

    def feeds(self, case: MatcherCase) -> dict[str, np.ndarray]:
        """What the runtime feeds the graph for this case."""
        feeds = {"src_feats": case.src_feats, "dst_feats": case.dst_feats}
        if self.matcher_input == "weights":
            feeds["src_weights"] = descriptor_weights(
                case.src_masks, case.src_boxes, self.src.image_size, self.src.feat_grid
            )[:, None]
            feeds["dst_weights"] = descriptor_weights(
                case.dst_masks, case.dst_boxes, self.dst.image_size, self.dst.feat_grid
            )[None]
        else:
            feeds["src_mask"] = case.src_masks[:, None]
            feeds["src_box"] = case.src_boxes[:, None].astype(np.float32)
            feeds["dst_masks"] = case.dst_masks[None]
            feeds["dst_boxes"] = case.dst_boxes[None].astype(np.float32)
        return feeds

    def fixed_feeds(self) -> list[dict[str, np.ndarray]]:
        """The feeds of the fixed-shape cases (N=1, an empty candidate, N=``large_n``)."""
        return [self.feeds(self.case(i)) for i in range(self.n_fixed)]

    def _references(self) -> list[np.ndarray]:
        if not self._reference:
            self._reference = [
                self.reference.infer(self.feeds(self.case(i)))["similarities"]
                for i in range(len(self.shapes))
            ]
        return self._reference

    def run(self, session: Session, precision: str) -> list[CheckRecord]:
        """Checks of ``session`` against the reference (``compare_matcher``); fp16's argmax
        agreement counts the random candidate sets only."""
        results = []
        for index, expected in enumerate(self._references()):
            case = self.case(index)
            got = session.infer(self.feeds(case))["similarities"]
            results.append(
                MatcherResult(
                    expected, got, agreement=index >= self.n_fixed, dst_masks=case.dst_masks
                )  # fmt: skip
            )
        what = f"{len(self.shapes)} cases incl. N=1, an empty candidate, N={self.shapes[2][1]}"
        return compare_matcher(results, precision, TOLERANCES[precision], what)
