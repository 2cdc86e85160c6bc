"""The ``torch`` backend of ``omama-run``: PyTorch modules behind the runtime's session API.

``runtime`` never imports torch, so this backend lives here and announces itself through the
entry-point group ``omama.backends``::

    [project.entry-points."omama.backends"]
    torch = "omama_train.torch_backend:register"

:func:`runtime.sessions.select_backend` loads it only when ``--backend torch`` is asked for.
A :class:`TorchSession` runs a given ``nn.Module`` (or a zero-argument loader returning one,
so nothing is built before the backend is chosen) with the same ``infer`` / ``inputs`` /
``outputs`` interface as the ONNX Runtime and TensorRT sessions; it is the reference that
every other backend is compared with. Importing this module does not import torch.

For ``omama-run`` the torch backend runs the models of an artifacts folder: the pipeline
passes a :class:`runtime.pipeline.ModelRef` (manifest + file entry) instead of a file, and
:func:`build_artifact_module` rebuilds the PyTorch module equivalent to that ONNX file from
the manifest's recorded configuration (backbone name and architecture, view sizes, matcher
grids, attention order, descriptor parameters, matcher input form) and the original
weights: files recorded by name and sha256 in the manifest, searched in the given
folders, ``$OMAMA_WEIGHTS`` and the artifacts folder; random-init exports are rebuilt from
their recorded seed with the export's recipe (``export.pipeline.build_models``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import OmamaError
from runtime.sessions import Session, TensorInfo, check_device, register_backend

TensorSpec = TensorInfo | tuple[str, Sequence[Any], Any]


def _as_info(spec: TensorSpec) -> TensorInfo:
    if isinstance(spec, TensorInfo):
        return spec
    try:
        name, shape, dtype = spec
    except (TypeError, ValueError) as exc:
        raise OmamaError(
            f"a torch session tensor is a TensorInfo or (name, shape, dtype), got {spec!r}"
        ) from exc
    return TensorInfo(str(name), tuple(shape), np.dtype(dtype))


def resolve_torch_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; others unchanged."""
    device = check_device(device)
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _flatten(value: Any) -> list:
    """Tensors of a module's output in order (nested tuples/lists flattened depth-first)."""
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flatten(item)]
    return [value]


class TorchSession(Session):
    """PyTorch module(s) with the runtime's session interface.

    Arguments:
        module: an ``nn.Module``, or a zero-argument callable returning one (built here).
            It is called as ``module(*inputs)`` in input order and returns a tensor, a
            (nested) tuple / list of tensors in output order, or a dict by output name.
        inputs / outputs: :class:`TensorInfo` or ``(name, shape, dtype)`` of each tensor,
            e.g. another session's ``inputs`` / ``outputs`` so both take the same feeds.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: torch's intra-op threads (process-wide in PyTorch), or None to leave it.
    """

    backend = "torch"

    def __init__(
        self,
        module: Any,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str = "cpu",
        name: str | None = None,
        threads: int | None = None,
    ) -> None:
        import torch

        self.device = resolve_torch_device(device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise OmamaError("the torch backend was asked for cuda but torch sees no GPU")
        if threads:
            torch.set_num_threads(int(threads))
        if not isinstance(module, torch.nn.Module):
            if not callable(module):
                raise OmamaError(
                    f"the torch backend runs an nn.Module or a loader returning one, got "
                    f"{type(module).__name__}"
                )
            module = module()
            if not isinstance(module, torch.nn.Module):
                raise OmamaError(f"the torch model loader returned {type(module).__name__}")
        self.inputs = tuple(_as_info(s) for s in inputs)
        self.outputs = tuple(_as_info(s) for s in outputs)
        if not self.inputs or not self.outputs:
            raise OmamaError("a torch session needs at least one input and one output")
        self.name = name or type(module).__name__
        self._module = module.eval().to(self.device)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        if self._module is None:
            raise OmamaError(f"{self._what()} is closed")
        with torch.inference_mode():
            args = [torch.from_numpy(feeds[i.name]).to(self.device) for i in self.inputs]
            result = self._module(*args)
        names = [o.name for o in self.outputs]
        if isinstance(result, Mapping):
            missing = [n for n in names if n not in result]
            if missing:
                raise OmamaError(f"{self._what()}: the module returned no {', '.join(missing)}")
            values = [result[n] for n in names]
        else:
            values = _flatten(result)
            if len(values) != len(names):
                raise OmamaError(
                    f"{self._what()}: the module returned {len(values)} tensors for "
                    f"{len(names)} outputs ({', '.join(names)})"
                )
        return {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}

    def close(self) -> None:
        self._module = None


def _open(
    model: Any,
    device: str = "auto",
    inputs: Sequence[TensorSpec] = (),
    outputs: Sequence[TensorSpec] = (),
    name: str | None = None,
    threads: int | None = None,
) -> TorchSession:
    """Factory for :func:`runtime.sessions.register_backend` (``BackendChoice.open``).

    ``model``: an ``nn.Module``, a loader returning one, or a model reference of an
    artifacts folder (an object with ``manifest``, ``entry`` and ``weights_dirs``, i.e.
    :class:`runtime.pipeline.ModelRef`), whose tensors default to the manifest entry's.
    """
    if _is_model_ref(model):
        ref = model
        inputs = inputs or [_spec_info(s) for s in ref.entry.inputs]
        outputs = outputs or [_spec_info(s) for s in ref.entry.outputs]
        name = name or ref.entry.model

        def model() -> Any:
            return build_artifact_module(ref.manifest, ref.entry, ref.weights_dirs)

    return TorchSession(model, inputs, outputs, device=device, name=name, threads=threads)


# ----------------------------------------------------------------------------- artifacts

# The export's random-init recipe (export.pipeline.build_models, export.fastsam): this layer
# may not import export, so the names are repeated; tests/test_pipeline.py checks every
# rebuilt module against its ONNX file.
RANDOM_BACKBONE = "dinov2_vits14_reg"


def _is_model_ref(model: Any) -> bool:
    return all(hasattr(model, a) for a in ("manifest", "entry", "weights_dirs"))


def _spec_info(spec: Any) -> TensorInfo:
    return TensorInfo(spec.name, tuple(spec.shape), np.dtype(spec.dtype))


def weights_search_dirs(manifest: Any, weights_dirs: Sequence[str | os.PathLike] = ()) -> list:
    """Folders searched for original weights: the given ones, ``$OMAMA_WEIGHTS``
    (``os.pathsep``-separated), then the artifacts folder."""
    env = [p for p in os.environ.get("OMAMA_WEIGHTS", "").split(os.pathsep) if p]
    dirs = [Path(d) for d in (*weights_dirs, *env)]
    if manifest.root is not None:
        dirs.append(Path(manifest.root))
    return list(dict.fromkeys(dirs))


def find_weights(record: Mapping[str, Any], what: str, dirs: Sequence[Path]) -> Path:
    """The weights file a manifest record names (``file`` + ``sha256``) in ``dirs``."""
    from runtime.manifest import sha256_file

    name, digest = record.get("file"), record.get("sha256")
    if not name:
        raise OmamaError(f"the artifacts' manifest does not name the {what} weights file")
    wrong = []
    for folder in dirs:
        path = folder / str(name)
        if path.is_file():
            if not digest or sha256_file(path) == digest:
                return path
            wrong.append(str(path))
    where = ", ".join(str(d) for d in dirs) or "nowhere"
    detail = f"; {', '.join(wrong)} has another sha256" if wrong else ""
    raise OmamaError(
        f"the torch backend rebuilds the {what} from its original weights, {name} "
        f"(sha256 {str(digest)[:12]}...), not found in {where}{detail}: pass --weights DIR or "
        "set OMAMA_WEIGHTS"
    )


def _random_seed(manifest: Any) -> int:
    seed = manifest.verification.get("seed")
    if seed is None:
        raise OmamaError(
            "these random-init artifacts do not record the seed they were exported with, so "
            "the torch backend cannot rebuild their weights; re-export them"
        )
    return int(seed)


def _backbone_spec(manifest: Any):
    from omama_train.models.backbones import get_spec

    record = manifest.backbone
    spec = get_spec(str(record.get("name") or RANDOM_BACKBONE))
    overrides = dict(record.get("architecture_overrides") or {})
    return dataclasses.replace(spec, timm_overrides=overrides) if overrides else spec


def _views_by_camera(manifest: Any) -> dict:
    return {view.camera: view for view in manifest.views.values()}


_BUILT: dict[tuple, Any] = {}  # the modules of the last artifacts folder opened


def _cached(kind: str, manifest: Any, dirs: tuple[Path, ...], build) -> Any:
    """Build once per artifacts folder: the views' backbones are built together (random
    init shares weights between them) and each session asks for its own."""
    folder = (str(manifest.root), manifest.created_utc, dirs)
    if any(key[1:] != folder for key in _BUILT):
        _BUILT.clear()
    key = (kind, *folder)
    if key not in _BUILT:
        _BUILT[key] = build(manifest, dirs)
    return _BUILT[key]


def _backbones(manifest: Any, dirs: tuple[Path, ...]) -> dict[str, Any]:
    """{camera: Backbone} of an artifacts folder (both views, built like the export)."""
    import torch

    from omama_train.models.backbones import build_backbone

    spec = _backbone_spec(manifest)
    record = manifest.backbone
    pos_resize = record.get("pos_resize")
    views = _views_by_camera(manifest)
    order = [manifest.views["source"].camera, manifest.views["destination"].camera]
    weights = record.get("weights") or {}
    out: dict[str, Any] = {}
    if weights.get("random", manifest.random_init):
        seed = _random_seed(manifest)
        for cam in order:
            torch.manual_seed(seed + 1)
            model = build_backbone(spec, views[cam].image_size)
            if out:  # one backbone, two sizes: every weight but the positional table shared
                first = next(iter(out.values()))
                shared = {k: v for k, v in first.state_dict().items() if "pos_embed" not in k}
                model.load_state_dict(shared, strict=False)
            out[cam] = model.eval()
        return out
    path = find_weights(weights, "backbone", dirs)
    for cam in order:
        out[cam] = build_backbone(
            spec,
            views[cam].image_size,
            path,
            pos_resize=pos_resize,
            # A file without the projection: the export's seeded one (manifest records seed).
            projection_seed=int(record.get("projection_seed", 0)),
        )
    return out


def _matcher(manifest: Any, dirs: tuple[Path, ...]) -> Any:
    import torch

    from omama_train.models.matcher import OMaMaMatcher, load_matcher

    record = manifest.matcher
    weights = record.get("weights") or {}
    attention = str(record.get("attention", "auto"))
    if weights.get("random", manifest.random_init):
        torch.manual_seed(_random_seed(manifest))
        model = OMaMaMatcher(
            manifest.direction,
            src_grid=tuple(record["src_grid"]),
            dst_grid=tuple(record["dst_grid"]),
            dim=int(record.get("dim", 768)),
            heads=int(record.get("heads", 4)),
            attention=attention,
            backbone=RANDOM_BACKBONE,
        )
    else:
        model = load_matcher(find_weights(weights, "matcher", dirs), manifest.direction)
        model.CROSS_context_attn.mode = attention
    return model.eval()


def _fastsam_network(manifest: Any, dirs: tuple[Path, ...]) -> Any:
    from omama_train.models.fastsam import load_fastsam

    weights = manifest.fastsam.get("weights") or {}
    if not weights.get("random", manifest.random_init):
        return load_fastsam(find_weights(weights, "FastSAM", dirs)).model.eval()
    with tempfile.TemporaryDirectory(prefix="omama-fastsam-") as tmp:
        path = _standin_fastsam(Path(tmp) / "standin.pt", _random_seed(manifest))
        return load_fastsam(path).model.eval()


def _standin_fastsam(path: Path, seed: int) -> Path:
    """The export's random FastSAM stand-in (YOLOv8n-seg, one class), saved and reloaded as
    the export does (ultralytics stores checkpoints in half precision)."""
    from omama_train.models.fastsam import build_random_fastsam

    return build_random_fastsam(path, "n", seed)


def build_artifact_module(manifest: Any, entry: Any, weights_dirs: Sequence = ()) -> Any:
    """The PyTorch module computing what ``entry``'s ONNX file computes, called with the
    file's inputs in order and returning its outputs in order.

    ``backbone_<camera>``: image (B, 3, H, W) -> feats (B, 768, h, w); ``matcher``: pooling
    + matcher in the manifest's input form -> similarities (B, N); ``fastsam``: images ->
    (output0, output1), the raw head outputs, also for a file with NMS in its graph: the
    runtime then runs the NMS the graph bakes in (same conf, iou, max_det; ties kept in
    index order as ONNX Runtime keeps them), which gives the graph's candidates.
    """
    dirs = tuple(weights_search_dirs(manifest, weights_dirs))
    model = entry.model
    names = [spec.name for spec in entry.inputs]
    if model.startswith("backbone_"):
        cam = model.removeprefix("backbone_")
        backbones = _cached("backbones", manifest, dirs, _backbones)
        if cam not in backbones:
            raise OmamaError(f"the manifest has no view with camera {cam!r} for {model}")
        return backbones[cam]
    matcher_graph, fastsam_graph = _graph_classes()
    if model == str(manifest.matcher.get("model", "matcher")):
        return matcher_graph(_cached("matcher", manifest, dirs, _matcher), manifest, names)
    if model == str(manifest.fastsam.get("model", "fastsam")):
        return fastsam_graph(_cached("fastsam", manifest, dirs, _fastsam_network))
    raise OmamaError(f"the torch backend does not know how to build model {model!r}")


@lru_cache(maxsize=1)
def _graph_classes() -> tuple[type, type]:
    """(MatcherGraph, FastSAMGraph): nn.Module classes defined on first use, so importing
    this module does not import torch."""
    import torch
    from torch import nn

    from omama_train.models.descriptors import descriptor_weights

    def pool_shared(feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """feats (1, C, h, w), weights (B, N, 2, h*w) -> (B, N, 2C) descriptors."""
        tokens = feats.flatten(2).transpose(1, 2)  # (1, h*w, C)
        batch, count = weights.shape[0], weights.shape[1]
        pooled = torch.matmul(weights.reshape(batch, 2 * count, weights.shape[-1]), tokens)
        return pooled.reshape(batch, count, 2 * feats.shape[1])

    class MatcherGraph(nn.Module):
        """Descriptor pooling + matcher, fed like ``matcher.onnx`` (``weights`` or ``masks``
        input form): -> similarities (B, N)."""

        def __init__(self, matcher: nn.Module, manifest: Any, input_names: list[str]) -> None:
            super().__init__()
            self.matcher = matcher
            self.form = str(manifest.matcher["input"])
            self.input_names = list(input_names)
            self.views = {role: manifest.views[role] for role in ("source", "destination")}
            self.context_px = int(manifest.descriptor["context_px"])
            self.reduction = int(manifest.descriptor["reduction"])

        def _weights(self, masks, boxes, role: str) -> torch.Tensor:
            view = self.views[role]
            return descriptor_weights(masks, boxes, view.image_size, view.feat_grid,
                                      self.context_px, self.reduction)  # fmt: skip

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            feeds = dict(zip(self.input_names, args, strict=True))
            if self.form == "weights":
                src_w, dst_w = feeds["src_weights"], feeds["dst_weights"]
            else:
                src_w = self._weights(feeds["src_mask"], feeds["src_box"], "source")
                dst_w = self._weights(feeds["dst_masks"], feeds["dst_boxes"], "destination")
            src_feats, dst_feats = feeds["src_feats"], feeds["dst_feats"]
            src_desc = pool_shared(src_feats, src_w)
            dst_desc = pool_shared(dst_feats, dst_w)
            return self.matcher(src_desc, dst_desc, src_feats, dst_feats)

    class FastSAMGraph(nn.Module):
        """The ultralytics network: images -> raw (output0, output1), without the in-graph
        NMS wrapper (the runtime's NMS reproduces it, see build_artifact_module)."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.net(images)
            first = out[0] if isinstance(out, (tuple, list)) else out
            return first[0], first[1]

    return MatcherGraph, FastSAMGraph


def _unavailable(device: str) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch not installed (pip install 'omama[train]')"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA GPU"
    return None


def register() -> None:
    """Entry point of ``omama.backends``: make ``--backend torch`` available."""
    register_backend("torch", _open, _unavailable)
