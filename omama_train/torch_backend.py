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

For an artifacts folder the torch backend runs the very modules the export traced:
``runtime.sessions.open_artifact`` passes a :class:`runtime.sessions.ModelRef` (manifest +
file entry) instead of a file, and :func:`build_artifact_module` rebuilds that file's module
of ``omama_train.models.artifact_modules`` from the manifest's records (backbone name and
architecture, view sizes, matcher grids, attention order, descriptor parameters, matcher
input form) and the original weights: files recorded by name and sha256, searched in the
given folders, ``$OMAMA_WEIGHTS`` and the artifacts folder; random weights from their
recorded seed (and weight profile) with the same recipes the export used (``build_random_backbone``,
``random_matcher``, ``build_random_fastsam``). The export replays its golden files on this
backend, so a manifest records whether the rebuild gives the exported numbers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omama_train.devices import check_device as check_torch_device
from omama_train.devices import default_device
from runtime.errors import OmamaError
from runtime.manifest import TensorSpec
from runtime.sessions import Session, check_device, register_backend

TensorLike = TensorSpec | tuple[str, Sequence[Any], Any]


def _as_spec(spec: TensorLike) -> TensorSpec:
    if isinstance(spec, TensorSpec):
        return spec
    try:
        name, shape, dtype = spec
    except (TypeError, ValueError) as exc:
        raise OmamaError(
            f"a torch session tensor is a TensorSpec or (name, shape, dtype), got {spec!r}"
        ) from exc
    return TensorSpec(str(name), tuple(shape), np.dtype(dtype).name)


def resolve_torch_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; CUDA refused without a GPU."""
    device = check_device(device)
    return check_torch_device(default_device() if device == "auto" else device)


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
        inputs / outputs: :class:`TensorSpec` or ``(name, shape, dtype)`` of each tensor,
            e.g. another session's ``inputs`` / ``outputs`` so both take the same feeds.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        threads: torch's intra-op threads (process-wide in PyTorch), or None to leave it.
    """

    backend = "torch"

    def __init__(
        self,
        module: Any,
        inputs: Sequence[TensorLike],
        outputs: Sequence[TensorLike],
        device: str = "cpu",
        name: str | None = None,
        threads: int | None = None,
    ) -> None:
        import torch

        self.device = resolve_torch_device(device)
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
        self.inputs = tuple(_as_spec(s) for s in inputs)
        self.outputs = tuple(_as_spec(s) for s in outputs)
        if not self.inputs or not self.outputs:
            raise OmamaError("a torch session needs at least one input and one output")
        self.name = name or type(module).__name__
        self.providers = (f"torch {torch.__version__}",)
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
    inputs: Sequence[TensorLike] = (),
    outputs: Sequence[TensorLike] = (),
    name: str | None = None,
    threads: int | None = None,
) -> TorchSession:
    """Factory for :func:`runtime.sessions.register_backend` (``BackendChoice.open``).

    ``model``: an ``nn.Module``, a loader returning one, or a model reference of an
    artifacts folder (an object with ``manifest``, ``entry`` and ``weights_dirs``, i.e.
    :class:`runtime.sessions.ModelRef`), whose tensors default to the manifest entry's.
    """
    if _is_model_ref(model):
        ref = model
        inputs = inputs or ref.entry.inputs
        outputs = outputs or ref.entry.outputs
        name = name or ref.entry.model

        def model() -> Any:
            return build_artifact_module(ref.manifest, ref.entry, ref.weights_dirs)

    return TorchSession(model, inputs, outputs, device=device, name=name, threads=threads)


# ----------------------------------------------------------------------------- artifacts


def _is_model_ref(model: Any) -> bool:
    return all(hasattr(model, a) for a in ("manifest", "entry", "weights_dirs"))


def weights_search_dirs(manifest: Any, weights_dirs: Sequence[str | os.PathLike] = ()) -> list:
    """Folders searched for original weights: the given ones, ``$OMAMA_WEIGHTS``
    (``os.pathsep``-separated), then the artifacts folder."""
    env = [p for p in os.environ.get("OMAMA_WEIGHTS", "").split(os.pathsep) if p]
    dirs = [Path(d) for d in (*weights_dirs, *env)]
    if manifest.root is not None:
        dirs.append(Path(manifest.root))
    return list(dict.fromkeys(dirs))


def find_weights(record: Any, what: str, dirs: Sequence[Path]) -> Path:
    """The weights file a manifest ``WeightsRecord`` names (``file`` + ``sha256``) in ``dirs``."""
    from runtime.manifest import sha256_file

    name, digest = record.file, record.sha256
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
        f"(sha256 {str(digest)[:12]}...), not found in {where}{detail}: pass --weights-dir DIR or "
        "set OMAMA_WEIGHTS"
    )


def _random_seed(record: Any, what: str) -> int:
    if record.seed is None:
        raise OmamaError(
            f"these artifacts do not record the seed of their random {what}, so the torch "
            "backend cannot rebuild it; re-export them"
        )
    return int(record.seed)


def _backbone_spec(manifest: Any):
    from omama_train.models.backbones import get_spec

    record = manifest.backbone
    spec = get_spec(record.name)
    overrides = dict(record.architecture_overrides)
    return dataclasses.replace(spec, timm_overrides=overrides) if overrides else spec


_BUILT: dict[tuple, Any] = {}  # the networks of the last artifacts folder opened


def _cached(kind: str, manifest: Any, dirs: tuple[Path, ...], build) -> Any:
    """Build once per artifacts folder: each view's session asks for its own backbone, and
    a folder's sessions share the files read for them."""
    folder = (str(manifest.root), manifest.created_utc, dirs)
    if any(key[1:] != folder for key in _BUILT):
        _BUILT.clear()
    key = (kind, *folder)
    if key not in _BUILT:
        _BUILT[key] = build(manifest, dirs)
    return _BUILT[key]


def _backbones(manifest: Any, dirs: tuple[Path, ...]) -> dict[str, Any]:
    """{camera: Backbone} of an artifacts folder, built as the export built them: the
    registry's one random initialisation of the recorded seed and weight profile
    (``build_random_backbone``) or the weights file."""
    from omama_train.models.backbones import build_backbone, build_random_backbone

    spec = _backbone_spec(manifest)
    record = manifest.backbone
    weights = record.weights
    out: dict[str, Any] = {}
    if weights.random:
        seed = _random_seed(weights, "backbone")
        from omama_train.models.backbones import random_backbone_state

        state = random_backbone_state(spec, seed, weights.profile)
        for view in manifest.views.values():
            out[view.kind] = build_random_backbone(
                spec, view.image_size, seed, record.pos_resize, state=state, profile=weights.profile
            )
        return out
    path = find_weights(weights, "backbone", dirs)
    for view in manifest.views.values():
        out[view.kind] = build_backbone(
            spec,
            view.image_size,
            path,
            pos_resize=record.pos_resize,
            # A file without the projection: the export's seeded one (the manifest has it).
            projection_seed=record.projection_seed or 0,
        )
    return out


def _matcher(manifest: Any, dirs: tuple[Path, ...]) -> Any:
    from omama_train.models.matcher import load_matcher, random_matcher

    record = manifest.matcher
    if record.weights.random:
        return random_matcher(
            manifest.direction,
            record.src_grid,
            record.dst_grid,
            _random_seed(record.weights, "matcher"),
            attention=record.attention,
            backbone=manifest.backbone.name,
            dim=record.dim,
            heads=record.heads,
        )
    model = load_matcher(find_weights(record.weights, "matcher", dirs), manifest.direction)
    model.CROSS_context_attn.mode = record.attention
    return model.eval()


def _fastsam_network(manifest: Any, dirs: tuple[Path, ...]) -> Any:
    from omama_train.models.fastsam import build_random_fastsam, load_fastsam

    weights = manifest.fastsam.weights
    if weights is None:
        raise OmamaError("the artifacts' manifest records no FastSAM weights")
    if not weights.random:
        return load_fastsam(find_weights(weights, "FastSAM", dirs)).model.eval()
    variant = random_fastsam_variant(weights.architecture)
    with tempfile.TemporaryDirectory(prefix="omama-fastsam-") as tmp:
        # Saved and reloaded as the export does (ultralytics stores checkpoints in half).
        path = build_random_fastsam(
            Path(tmp) / "random.pt", variant, _random_seed(weights, "FastSAM")
        )
        return load_fastsam(path).model.eval()


def random_fastsam_variant(architecture: str | None) -> str:
    """``yolov8n-seg`` / ``yolov8s-seg`` / ``yolov8x-seg`` (a manifest's record) -> n / s / x."""
    from omama_train.models.fastsam import VARIANT_YAML

    for variant, yaml in VARIANT_YAML.items():
        if architecture == yaml.removesuffix(".yaml"):
            return variant
    raise OmamaError(f"the manifest names an unknown random FastSAM network {architecture!r}")


def build_artifact_module(manifest: Any, entry: Any, weights_dirs: Sequence = ()) -> Any:
    """The module of ``omama_train.models.artifact_modules`` that ``entry``'s file was
    exported from, rebuilt from the manifest's records and the original weights (or the
    recorded seed): called with the file's inputs in order, returns its outputs in order.

    ``backbone_<camera>``: image -> feats; ``matcher``: pooling + matcher in the manifest's
    input form -> similarities (B, N); ``fastsam``: images -> (output0, output1), the raw
    head outputs, also for a file with NMS in its graph: the runtime then runs the NMS the
    graph bakes in (same conf, iou, max_det; ties kept in index order as ONNX Runtime keeps
    them), which gives the graph's candidates.
    """
    from omama_train.models.artifact_modules import BackboneOnnx, FastSAMRaw, matcher_module

    dirs = tuple(weights_search_dirs(manifest, weights_dirs))
    model = entry.model
    if model.startswith("backbone_"):
        cam = model.removeprefix("backbone_")
        backbones = _cached("backbones", manifest, dirs, _backbones)
        if cam not in backbones:
            raise OmamaError(f"the manifest has no view with camera {cam!r} for {model}")
        return BackboneOnnx(backbones[cam]).eval()
    if model == manifest.matcher.model:
        descriptor = manifest.descriptor
        return matcher_module(
            _cached("matcher", manifest, dirs, _matcher),
            manifest.matcher.input,
            manifest.views["src"].image_size,
            manifest.views["dst"].image_size,
            descriptor.context_px,
            descriptor.reduction,
        )
    if manifest.fastsam.included and model == manifest.fastsam.model:
        return FastSAMRaw(_cached("fastsam", manifest, dirs, _fastsam_network)).eval()
    raise OmamaError(f"the torch backend does not know how to build model {model!r}")


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
