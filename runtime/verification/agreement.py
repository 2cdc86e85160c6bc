"""Pipeline agreement: does a quantized run pick the candidates the fp32 run picks?

Per-file parity says how far a quantized file's outputs drift; what users see is the pick.
This module measures the pick. Both runs see the same images and the same candidate sets;
only the backbones differ (fp32 files vs the run's, e.g. ``*_int8.onnx``) and one fp32
matcher scores both, so every difference comes from the quantized files. The comparison is
strict: a pick agrees only when it is the fp32 pick, or ties with it to float32 rounding
(:data:`~runtime.verification.compare.EXACT_TIE`: argmax could have taken either); a pick
that is merely close in similarity is a different answer to the user. The mean final-mask
IoU (the run's pick's mask against the fp32 pick's, the best over exactly tied fp32 picks)
is measured when the candidate masks are known and gated where a floor is given.

- :func:`pipeline_checks`: the checks on any image pairs and candidate sets (the export
  runs it on synthetic scenes and random candidate sets, ``export.verify.int8``);
- :func:`golden_agreement`: the same on the folder's golden files only, for ``omama-run
  verify --precision int8`` on the target (no torch, no ``onnx``): the fp32 and the run's
  backbone files on the golden backbone images, the fp32 matcher on the golden matcher
  cases' query and candidate inputs (every query row against every candidate set).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.errors import OmamaError
from runtime.manifest import ArtifactFile, CheckRecord, Manifest, VerificationRecord
from runtime.sessions import ArtifactPlan, Session, open_artifact, select_backend
from runtime.verification.compare import (
    EXACT_TIE,
    MatcherResult,
    compare_matcher,
    mask_iou,
    tied_best,
)
from runtime.verification.golden import read_golden
from runtime.verification.replay import GOLDEN_INPUTS, session_record
from runtime.verification.tolerances import check

PIPELINE_MODEL = "pipeline"
ROLES = ("src", "dst")
FEATS = {"src": "src_feats", "dst": "dst_feats"}


@dataclass
class PairFeatures:
    """Backbone features (1, D, h, w) of one image pair per role (``src`` / ``dst``): the fp32
    files' (``reference``) and the run's (``got``)."""

    reference: dict[str, np.ndarray]
    got: dict[str, np.ndarray]


@dataclass
class CandidateSet:
    """One matcher call without its features: the query and candidate inputs of the matcher
    graph (B queries, N candidates) and, when known, the candidate masks (N, H, W)."""

    pair: int  # index of the image pair whose features it is scored on
    feeds: dict[str, np.ndarray]
    dst_masks: np.ndarray | None = None


def pipeline_file(files: Sequence[str]) -> str:
    """The ``file`` of a pipeline record: ``pipeline: a.onnx + b.onnx + matcher.onnx``."""
    return "pipeline: " + " + ".join(dict.fromkeys(files))


def pipeline_checks(
    matcher: Session,
    pairs: Sequence[PairFeatures],
    sets: Iterable[CandidateSet],
    tolerances: Mapping[str, float],
    what: str,
    min_argmax: float,
    min_mask_iou: float | None = None,
    precision: str = "int8",
    tie_band: float = EXACT_TIE,
) -> list[CheckRecord]:
    """The fp32 ``matcher`` on every candidate set with the fp32 features and with the run's,
    compared (:func:`compare_matcher` under ``tolerances``, the run precision's, forgiving
    only picks within ``tie_band`` of the best: float32-exact ties by default).

    Checks: argmax agreement gated at ``min_argmax``; the similarities' max abs error
    (reported: the per-file records gate the features, the picks decide here); the mean
    final-mask IoU when masks are known, gated at ``min_mask_iou`` when given.
    ``precision``: the run's, named in the details.
    """
    results, ious = [], []
    for cand in sets:
        pair = pairs[cand.pair]
        expected = _similarities(matcher, pair.reference, cand.feeds)
        got = _similarities(matcher, pair.got, cand.feeds)
        results.append(MatcherResult(expected, got, agreement=True))
        if cand.dst_masks is not None:  # kept per pick, not per set: masks can be large
            ious += [pick_iou(cand.dst_masks, e, g, tie_band)
                     for e, g in zip(expected, got, strict=True)]  # fmt: skip
    if not results:
        raise OmamaError("pipeline agreement: no candidate sets to compare on")
    tol = dict(tolerances) | {"argmax_agreement": min_argmax}
    sims, argmax = compare_matcher(results, precision, tol, what, tie_band=tie_band)
    sims = dataclasses.replace(sims, gated=False, detail=f"{sims.detail}; reported: the picks "
                               "decide, the per-file records gate the features")  # fmt: skip
    out = [argmax, sims]
    if ious:
        out.append(
            check(
                "similarities",
                "final-mask IoU (mean)",
                float(np.mean(ious)),
                1.0 if min_mask_iou is None else float(min_mask_iou),
                higher_is_better=True,
                gated=min_mask_iou is not None,
                detail=f"IoU of the fp32 pick's mask and the {precision} pick's, {len(ious)} picks",
            )
        )
    return out


def pick_iou(
    masks: np.ndarray, expected: np.ndarray, got: np.ndarray, tie_band: float = EXACT_TIE
) -> float:
    """IoU of the run's pick's mask with the fp32 pick's: the best over the fp32 picks tied
    within ``tie_band`` (float32 rounding: argmax could have returned any of them)."""
    pick = masks[int(got.argmax())]
    return max(mask_iou(masks[int(i)], pick) for i in tied_best(expected, tie_band))


def _similarities(
    matcher: Session, feats: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
) -> np.ndarray:
    out = matcher.infer({FEATS["src"]: feats["src"], FEATS["dst"]: feats["dst"], **feeds})
    return out["similarities"] if "similarities" in out else next(iter(out.values()))


def backbone_features(session: Session, image: np.ndarray) -> np.ndarray:
    """Features (B, D, h, w) of a normalised image batch (B, 3, H, W) on ``session``."""
    out = session.infer({session.inputs[0].name: image})
    return out["feats"] if "feats" in out else next(iter(out.values()))


# ----------------------------------------------------------------------------- golden files


def golden_candidate_sets(manifest: Manifest) -> list[CandidateSet]:
    """Every query row of the golden matcher cases against every candidate set of N >= 2
    (one-candidate sets decide nothing): the matcher inputs other than features, as stored."""
    golden = manifest.golden_of(manifest.matcher.model)
    if golden is None:
        raise OmamaError(
            f"the artifacts in {manifest.root} hold no golden matcher file (exported with "
            "--no-verify): re-export to verify the int8 pipeline on this machine"
        )
    _, cases = read_golden(manifest.path_of(golden))
    feeds = [{k: v for k, v in c.feeds().items() if k not in FEATS.values()} for c in cases]
    queries = [{k: v for k, v in f.items() if k.startswith("src_")} for f in feeds]
    candidates = [{k: v for k, v in f.items() if k.startswith("dst_")} for f in feeds]
    sets = []
    for cand in candidates:
        count = next(iter(cand.values())).shape[1]
        if count < 2:
            continue
        masks = cand["dst_masks"][0] if "dst_masks" in cand else None
        sets += [CandidateSet(0, query | cand, masks) for query in queries]
    return sets


def golden_images(manifest: Manifest, role: str) -> np.ndarray:
    """The golden backbone images (B, 3, H, W) of view ``role``, as their feeds."""
    model = manifest.backbone_model(role)
    golden = manifest.golden_of(model)
    if golden is None:
        raise OmamaError(
            f"the artifacts in {manifest.root} hold no golden file for {model} (exported with "
            "--no-verify): re-export to verify the int8 pipeline on this machine"
        )
    _, cases = read_golden(manifest.path_of(golden))
    return np.concatenate([case.feeds()["image"] for case in cases])


def _reference_entry(manifest: Manifest, model: str, plan: ArtifactPlan):
    """The fp32 file of ``model`` for the plan's format and backend, else the fp32 ONNX file on
    ONNX Runtime CPU (TensorRT folders hold no fp32 engines of the backbones)."""
    entry = manifest.find(model, plan.file_format, "fp32")
    if entry is not None:
        return plan.choice, entry
    return select_backend("onnxruntime", "cpu"), manifest.select(model, "onnx", "fp32")


def golden_agreement(
    manifest: Manifest,
    plan: ArtifactPlan,
    threads: int | None = None,
    weights_dirs: Sequence[str | os.PathLike] = (),
) -> VerificationRecord:
    """The pipeline agreement of the plan's precision with fp32 on the golden files, on the
    plan's backend (see the module docstring); gated at the manifest's ``argmax_agreement``
    tolerance of that precision."""
    tolerances = manifest.verification.tolerances.get(plan.precision)
    if not tolerances:
        raise OmamaError(f"the manifest records no {plan.precision} tolerances (re-export)")
    reference: dict[str, np.ndarray] = {}
    got: dict[str, np.ndarray] = {}
    files: list[str] = []
    for role in ROLES:
        model = manifest.backbone_model(role)
        images = golden_images(manifest, role)
        run_entry = manifest.run_file(model, plan.file_format, plan.precision)
        choice, ref_entry = _reference_entry(manifest, model, plan)
        got[role] = _features(plan.choice, manifest, run_entry, images, threads, weights_dirs)
        reference[role] = _features(choice, manifest, ref_entry, images, threads, weights_dirs)
        files.append(run_entry.path)
    matcher_entry = manifest.run_file(manifest.matcher.model, plan.file_format, plan.precision)
    files.append(matcher_entry.path)
    sets = golden_candidate_sets(manifest)
    decisions = sum(len(next(iter(s.feeds.values()))) for s in sets)
    what = f"golden images, {len(sets)} candidate sets ({decisions} picks) from golden/matcher"
    with open_artifact(plan.choice, manifest, matcher_entry, threads, weights_dirs) as matcher:
        checks = pipeline_checks(
            matcher,
            [PairFeatures(reference, got)],
            sets,
            tolerances,
            what,
            min_argmax=float(tolerances["argmax_agreement"]),
            min_mask_iou=tolerances.get("final_mask_iou_mean"),
            # Folders exported before the strict gate record no band: the one they passed.
            tie_band=float(tolerances.get("argmax_tie_band", tolerances["similarities_max_abs"])),
        )
        return session_record(matcher, pipeline_file(files), PIPELINE_MODEL, plan.precision,
                              GOLDEN_INPUTS, tolerances, checks)  # fmt: skip


def _features(choice, manifest, entry: ArtifactFile, images, threads, weights_dirs) -> np.ndarray:
    """Features (1, D, h, w) of the first golden image on ``entry`` opened on ``choice``."""
    with open_artifact(choice, manifest, entry, threads, weights_dirs) as session:
        return backbone_features(session, images[:1])
