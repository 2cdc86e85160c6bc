"""Parity of a backbone graph with the torch backend."""

from __future__ import annotations

import numpy as np

from runtime.manifest import CheckRecord
from runtime.sessions import Session
from runtime.verification.compare import compare_backbone, feats_reference
from runtime.verification.inputs import random_images
from runtime.verification.tolerances import TOLERANCES


class BackboneParity:
    """Features of 2 random images, at batch 2 and batch 1, against the torch backend's."""

    def __init__(self, reference: Session, image_size: tuple[int, int], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = random_images(rng, 2, image_size)
        self.reference = reference
        self._records: list[dict] = []

    def _feeds(self) -> list[dict[str, np.ndarray]]:
        return [{"image": self.images}, {"image": self.images[:1]}]

    def run(self, session: Session, precision: str) -> list[CheckRecord]:
        if not self._records:
            self._records = [
                feats_reference(self.reference.infer(f)["feats"], None) for f in self._feeds()
            ]
        pairs = [
            (ref, session.infer(feeds)["feats"])
            for ref, feeds in zip(self._records, self._feeds(), strict=True)
        ]
        return compare_backbone(pairs, precision, TOLERANCES[precision], "batch 2 and batch 1")
