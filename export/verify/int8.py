"""The int8 fidelity gate of an export: the int8 pipeline (int8 backbones, fp32 matcher)
against the fp32 pipeline on ``--parity-sets`` candidate sets.

The sets are spread over a few synthetic image pairs (:data:`SETS_PER_PAIR` sets per pair,
so the backbones run four times per pair, not per set): noisy synthetic scenes at each
view's size (:func:`runtime.verification.inputs.synthetic_scene`), preprocessed as the
runtime does; on each pair, random candidate sets (one query, N in 2..64 candidates, as the
matcher parity draws them). :func:`runtime.verification.agreement.pipeline_checks` compares
the picks strictly (the fp32 pick itself; float32-exact ties aside): argmax agreement gated
at ``--min-argmax``, the mean final-mask IoU at ``--min-mask-iou``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from export.verify.matcher import MatcherCase, MatcherParity, ViewGeometry
from runtime.manifest import CheckRecord
from runtime.pooling import mask_boxes
from runtime.preprocess import normalize_image
from runtime.sessions import Session
from runtime.verification.agreement import (
    CandidateSet,
    PairFeatures,
    backbone_features,
    pipeline_checks,
)
from runtime.verification.compare import EXACT_TIE
from runtime.verification.inputs import candidate_boxes, random_masks, synthetic_scene
from runtime.verification.tolerances import TOLERANCES

SETS_PER_PAIR = 20


def int8_tolerances(config) -> dict[str, float]:
    """``TOLERANCES["int8"]`` with the export's gate (``--min-argmax``, ``--min-mask-iou``):
    what the gate applies and the manifest records, so ``omama-run verify --precision int8``
    on the target holds the files to the same floors."""
    return dict(TOLERANCES["int8"]) | {
        "argmax_agreement": float(config.min_argmax),
        "final_mask_iou_mean": float(config.min_mask_iou),
        "argmax_tie_band": EXACT_TIE,
    }


AGREEMENT_INPUTS = "int8 pipeline vs fp32"


class PipelineAgreement:
    """Synthetic image pairs and random candidate sets of the gate (see the module docstring).

    ``src`` / ``dst``: each view's image size and token grid; ``form``: the matcher's input
    (``weights`` | ``masks``); ``dim``: its feature width; ``sets``: candidate sets in all.
    """

    def __init__(
        self, src: ViewGeometry, dst: ViewGeometry, form: str, dim: int, sets: int, seed: int = 0
    ) -> None:
        self.geometry = {"src": src, "dst": dst}
        self.sets = sets
        self.pairs = max(1, math.ceil(sets / SETS_PER_PAIR))
        self.seed = seed
        self._feeds = MatcherParity(None, dim, src, dst, form, random_sets=0, seed=seed)

    def images(self, role: str) -> np.ndarray:
        """The pairs' normalised images (P, 3, H, W) of view ``role``."""
        size = self.geometry[role].image_size
        rng = np.random.default_rng([self.seed, 23, 0 if role == "src" else 1])
        return np.stack([normalize_image(synthetic_scene(rng, size)) for _ in range(self.pairs)])

    def candidate_sets(self) -> Iterator[CandidateSet]:
        """The random candidate sets, drawn again on each call (their masks can be large)."""
        for index in range(self.sets):
            rng = np.random.default_rng([self.seed, 24, index])
            src_masks = random_masks(rng, 1, self.geometry["src"].image_size)
            dst_masks = random_masks(rng, int(rng.integers(2, 65)),
                                     self.geometry["dst"].image_size)  # fmt: skip
            case = MatcherCase(None, None, src_masks, mask_boxes(src_masks), dst_masks,
                               candidate_boxes(rng, dst_masks))  # fmt: skip
            feeds = self._feeds.feeds(case)
            del feeds["src_feats"], feeds["dst_feats"]
            yield CandidateSet(index % self.pairs, feeds, dst_masks)

    def features(self, sessions: dict[str, Session]) -> list[dict[str, np.ndarray]]:
        """Per pair, each role's features on ``sessions[role]`` (one image per call, as runs)."""
        images = {role: self.images(role) for role in self.geometry}
        return [
            {role: backbone_features(sessions[role], images[role][p : p + 1]) for role in images}
            for p in range(self.pairs)
        ]

    def run(
        self,
        fp32: dict[str, Session],
        int8: dict[str, Session],
        matcher: Session,
        tolerances: dict[str, float],
        min_argmax: float,
        min_mask_iou: float,
    ) -> list[CheckRecord]:
        """The gate's checks: ``fp32`` / ``int8`` backbone sessions by role, the fp32 matcher."""
        pairs = [
            PairFeatures(ref, got)
            for ref, got in zip(self.features(fp32), self.features(int8), strict=True)
        ]
        what = f"{self.pairs} synthetic image pairs x {self.sets} random candidate sets"
        return pipeline_checks(matcher, pairs, self.candidate_sets(), tolerances, what,
                               min_argmax=min_argmax, min_mask_iou=min_mask_iou)  # fmt: skip
