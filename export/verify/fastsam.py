"""Parity of a FastSAM graph (NMS in the graph or raw outputs) with the torch backend."""

from __future__ import annotations

import numpy as np

from runtime.manifest import CheckRecord, NmsSettings
from runtime.sessions import Session
from runtime.verification.compare import compare_fastsam, fastsam_reference
from runtime.verification.inputs import synthetic_scene
from runtime.verification.tolerances import TOLERANCES


class FastSAMParity:
    """FastSAM on ``scenes`` synthetic scenes (3:4 and 4:3, letterboxed to ``imgsz``)
    against the torch backend's raw outputs post-processed by the runtime's NMS
    (``compare_fastsam``): what ``--fastsam-nms runtime`` artifacts and ``--backend torch``
    give. A graph with NMS inside is compared by its rows; raw outputs by their values and
    the runtime's NMS on both."""

    def __init__(
        self,
        reference: Session,
        imgsz: int,
        settings: NmsSettings,
        seed: int = 0,
        scenes: int = 2,
    ) -> None:
        from runtime.fastsam_post import letterbox

        self.reference = reference
        self.settings = settings
        rng = np.random.default_rng([seed, 7])
        self.inputs = []
        for index in range(scenes):
            hw = (imgsz * 3 // 4, imgsz) if index % 2 == 0 else (imgsz, imgsz * 3 // 4)
            self.inputs.append(letterbox(synthetic_scene(rng, hw), imgsz))
        self._records: list[dict] = []

    def run(self, session: Session, precision: str, nms_in_graph: bool) -> list[CheckRecord]:
        if not self._records:
            for x, geom in self.inputs:
                out = self.reference.infer({"images": x})
                self._records.append(
                    fastsam_reference(out["output0"], out["output1"], geom, self.settings, None)
                )
        pairs = [
            (ref, session.infer({"images": x}))
            for ref, (x, _) in zip(self._records, self.inputs, strict=True)
        ]
        what = f"{len(pairs)} synthetic scenes"
        return compare_fastsam(
            pairs, self.settings, nms_in_graph, precision, TOLERANCES[precision], what
        )
