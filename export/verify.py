"""Verification of exported graphs: structure (checker, shape inference, constant folding)
and parity with the torch backend.

Every exported file gets:

- the ONNX checker (full check) and strict shape inference, and constant folding with
  onnxslim, whose node counts before and after are recorded;
- parity with the torch backend: the reference is a ``TorchSession`` of the very module the
  file was traced from (``omama_train.models.artifact_modules``), the file runs in a
  session opened through ``runtime.sessions`` (the class users run), and the outputs are
  compared by ``runtime.verification.compare`` with the tolerances of
  ``runtime.verification.tolerances`` (the code ``omama-run verify`` uses on the golden
  files). Inputs are many and random here (200 matcher candidate sets, two images per
  backbone, two scenes for FastSAM); the golden files keep a few cases at the real sizes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runtime.errors import OmamaError
from runtime.manifest import CheckRecord, GraphRecord, NmsSettings, TensorSpec
from runtime.pooling import descriptor_weights, mask_boxes
from runtime.sessions import Session
from runtime.verification.compare import (
    MatcherResult,
    compare_backbone,
    compare_fastsam,
    compare_matcher,
    fastsam_reference,
    feats_reference,
)
from runtime.verification.inputs import (
    candidate_boxes,
    random_images,
    random_masks,
    synthetic_scene,
)
from runtime.verification.tolerances import TOLERANCES

Feeds = dict[str, np.ndarray]

# ONNX protobuf size limit: bigger models keep their weights in one external-data file.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


# ------------------------------------------------------------------------------ graphs


class FinalGraph(NamedTuple):
    """A folded, checked ONNX file: its manifest ``GraphRecord`` and the external-data files
    it was saved with (names relative to its folder)."""

    record: GraphRecord
    external_data: list[str]


def onnx_opset(model) -> int:
    """The default-domain opset of an ``onnx.ModelProto``."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_onnx(model, path: str | os.PathLike) -> list[str]:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` beside it when the
    model is too big for one protobuf. Returns the external-data file names (relative)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > EXTERNAL_DATA_THRESHOLD_BYTES
    data_name = path.name + ".data"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if external:
            # The data file name is recorded inside the graph, so it is written in place.
            (path.parent / data_name).unlink(missing_ok=True)
            onnx.save_model(
                model,
                str(tmp),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if not external:
        (path.parent / data_name).unlink(missing_ok=True)
    return [data_name] if external else []


def check_onnx(path: str | os.PathLike) -> None:
    """ONNX checker (full check) and strict shape inference; OmamaError naming the file."""
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise OmamaError(f"{path.name} fails the ONNX checker: {exc}") from exc
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.shape_inference.infer_shapes_path(str(path), tmp, check_type=True, strict_mode=True)
    except Exception as exc:
        raise OmamaError(f"{path.name} fails ONNX shape inference: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def finalize_onnx(
    raw_path: str | os.PathLike, final_path: str | os.PathLike, check: bool = True
) -> FinalGraph:
    """Fold constants with onnxslim, save ``final_path``; with ``check``, run the ONNX checker
    and strict shape inference on the result.

    Stale intermediate shapes recorded by the exporter are dropped first (onnxslim infers
    them again), so a dimension traced at export time never looks static downstream.
    """
    import onnx
    import onnxslim

    model = onnx.load(str(raw_path))
    nodes_exported = len(model.graph.node)
    del model.graph.value_info[:]
    slimmed = onnxslim.slim(model)
    external = save_onnx(slimmed, final_path)
    if check:
        check_onnx(final_path)
    record = GraphRecord(
        opset=onnx_opset(slimmed),
        nodes_final=len(slimmed.graph.node),
        nodes_exported=nodes_exported,
        folded_with=f"onnxslim {onnxslim.__version__}",
        checker="ok" if check else "skipped",
        shape_inference="ok" if check else "skipped",
    )
    return FinalGraph(record, external)


def io_specs(path: str | os.PathLike) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX file as manifest tensor specs (dynamic axes as names)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = tuple(
            d.dim_param if d.dim_param else (int(d.dim_value) if d.HasField("dim_value") else None)
            for d in tensor.shape.dim
        )
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return TensorSpec(value.name, shape, dtype)

    initializers = {init.name for init in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


# ------------------------------------------------------------------------------ timing


# ------------------------------------------------------------------------------ parity


class BackboneParity:
    """Features of 2 random images, at batch 2 and batch 1, against the torch backend's."""

    def __init__(self, reference: Session, image_size: tuple[int, int], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = random_images(rng, 2, image_size)
        self.reference = reference
        self._records: list[dict] = []

    def _feeds(self) -> list[Feeds]:
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

    def feeds(self, case: MatcherCase) -> Feeds:
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


@contextlib.contextmanager
def temporary_dir(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A temporary folder (inside ``parent`` when given), removed afterwards."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=".omama-export-") as tmp:
        yield Path(tmp)
