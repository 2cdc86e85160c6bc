"""CPU precisions of the ego backbone: latency and pipeline fidelity per engine, both weight
profiles (issue 13's first target).

Model: DINOv2 ViT-B/14 with registers at 700x700 px (the ego backbone of ``omama export
--random-init --random-shapes official``), random weights of each ``--weight-profile``
(``plain``; ``outlier``: planted outlier channels and a high-norm token, as trained DINOv2
ViTs have). The artifacts are made by the CLI, one folder per profile::

    omama export --random-init --random-shapes official --weight-profile P --int8 --fp16 \\
        --no-fastsam-export --no-verify --no-engines --parity-sets 20 --out WORK/P/artifacts

(``--no-verify``: this script measures the fidelity itself, on 200 sets; the export's int8
gate still runs, on 20). Folders are reused while ``WORK/P/recipe.json`` matches.

Engines (``backend:precision``, ``+bf16``: OpenVINO runs the layers an int8 file kept in
float in bf16 instead of f32), every model opened through ``runtime.sessions``
(``plan_artifacts`` / ``open_artifact``), ``--threads`` threads each:
``onnxruntime:fp32`` (the baseline), ``onnxruntime:fp16``, ``onnxruntime:int8``,
``openvino:fp32``, ``openvino:bf16``, ``openvino:int8``, ``openvino:int8+bf16``.

- latency: one 700x700 image through the ego backbone; all engines open at once, one
  untimed call each, then ``--repeats`` rounds of one call per engine (round-robin, so a
  change of load hits every engine alike); the median, and the speed-up over the baseline;
- fidelity vs fp32: the export's int8 gate machinery (``export.verify.int8.
  PipelineAgreement``: synthetic scenes at each view's size, ``--sets`` random candidate
  sets of one query and N in 2..64 candidates, 20 sets per image pair): both backbones on
  the engine, the fp32 matcher (``matcher.onnx`` on ONNX Runtime) deciding, against the
  baseline's features. Strict argmax agreement (the same candidate), the agreement with
  ties (``compare_matcher``: a pick within the precision's similarity tolerance of the best
  counts), the mean final-mask IoU (the engine's pick's mask against the fp32 pick's: the
  candidates are the same, so it is below 1 only where the pick differs).

Target (per profile): the fastest int8 or bf16 engine >= 3.0x faster than the baseline with
strict argmax agreement >= 99% and mean final-mask IoU >= 0.99.

Usage: ``python -m benchmarks.bench_cpu_precisions [--threads 2] [--repeats 3] [--sets 200]
[--profiles plain outlier] [--engines ...]``. Writes
``benchmarks/results/bench_cpu_precisions.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.common import RESULTS_DIR, load_average, machine_record, write_result
from benchmarks.common import log as _log
from runtime.errors import OmamaError

os.environ.setdefault("YOLO_OFFLINE", "1")

RESULTS = RESULTS_DIR / "bench_cpu_precisions.json"
RECIPE_VERSION = 1
PROFILES = ("plain", "outlier")
BASELINE = "onnxruntime:fp32"
ENGINES = (
    BASELINE,
    "onnxruntime:fp16",
    "onnxruntime:int8",
    "openvino:fp32",
    "openvino:bf16",
    "openvino:int8",
    "openvino:int8+bf16",
)
FAST_PRECISIONS = ("int8", "bf16")  # what the speed target is about
TARGET_SPEEDUP = 3.0
TARGET_AGREEMENT = 0.99
TARGET_IOU = 0.99
EXPORT_PARITY_SETS = 20
# The control row of the fidelity table: the baseline's features with this much noise (x each
# map's std). Random-weight matchers can be insensitive to their features; the control says
# how large a feature error the agreement figures would notice.
CONTROL_NOISE = 0.1
CONTROL = "control: fp32 + 10% noise"
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")


# ----------------------------------------------------------------------------- engines


@dataclass(frozen=True)
class Engine:
    """A backend running one run precision; ``rest``: OpenVINO's arithmetic for the layers an
    int8 file kept in float (None: what ``omama-run`` does, f32)."""

    backend: str
    precision: str
    rest: str | None = None

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}" + (f"+{self.rest}" if self.rest else "")

    @property
    def spec(self) -> str:
        return f"{self.backend}:{self.precision}" + (f"+{self.rest}" if self.rest else "")


def parse_engine(text: str) -> Engine:
    """``backend:precision[+bf16]`` -> :class:`Engine`; an :class:`OmamaError` naming what is
    wrong otherwise (``openvino:int8+bf16``: int8 with bf16 for the layers kept float)."""
    from runtime.manifest import RUN_PRECISIONS
    from runtime.sessions.artifacts import BACKEND_PRECISIONS

    backend, sep, precision = text.partition(":")
    if not sep or backend not in BACKEND_PRECISIONS:
        raise OmamaError(
            f"engine {text!r}: expected BACKEND:PRECISION with BACKEND one of "
            f"{', '.join(BACKEND_PRECISIONS)} (e.g. openvino:bf16)"
        )
    precision, plus, rest = precision.partition("+")
    if precision not in RUN_PRECISIONS:
        raise OmamaError(f"engine {text!r}: precision must be one of {', '.join(RUN_PRECISIONS)}")
    if plus and (backend, precision, rest) != ("openvino", "int8", "bf16"):
        raise OmamaError(
            f"engine {text!r}: '+bf16' (the float layers of an int8 file in bf16) is "
            "openvino:int8+bf16 only"
        )
    return Engine(backend, precision, rest or None)


def engine_plan(manifest, engine: Engine):
    """The :class:`runtime.sessions.ArtifactPlan` of ``engine`` on the CPU (an OmamaError
    saying why when the backend, the CPU or the folder cannot run it)."""
    from runtime.sessions import plan_artifacts

    plan = plan_artifacts(manifest, engine.backend, "cpu", engine.precision)
    if engine.rest:
        from runtime.sessions import bf16_unsupported

        if why := bf16_unsupported():
            raise OmamaError(why)
        options = {**plan.choice.options, "inference_precision": engine.rest}
        plan = replace(plan, choice=replace(plan.choice, options=options))
    return plan


def open_backbone(manifest, plan, role: str, threads: int):
    """The session of view ``role``'s backbone as a run of ``plan`` opens it."""
    from runtime.sessions import open_artifact

    entry = manifest.run_file(manifest.backbone_model(role), plan.file_format, plan.precision)
    return open_artifact(plan.choice, manifest, entry, threads), entry.path


# ----------------------------------------------------------------------------- artifacts


def export_argv(profile: str, out: Path, shapes: str = "official") -> list[str]:
    """The ``omama export`` arguments of one profile's folder."""
    return [
        "export",
        "--random-init",
        "--random-shapes",
        shapes,
        "--weight-profile",
        profile,
        "--int8",
        "--fp16",
        "--no-fastsam-export",
        "--no-verify",
        "--no-engines",
        "--parity-sets",
        str(EXPORT_PARITY_SETS),
        "--out",
        str(out),
    ]


def recipe_of(profile: str, shapes: str) -> dict:
    """What makes a cached folder stale: this recipe, the export arguments and the int8
    quantization recipe the export uses."""
    from export.int8.calibration import SYNTHETIC_FRAMES
    from export.int8.quantize import BACKBONE_RECIPE, CALIBRATION_METHOD

    r = BACKBONE_RECIPE  # what it does, not the prose saying why
    made = repr((r.preset, r.model_type, r.kept_float, r.smooth_quant_alpha, CALIBRATION_METHOD,
                 SYNTHETIC_FRAMES))  # fmt: skip
    int8 = hashlib.sha256(made.encode()).hexdigest()[:16]
    return {
        "version": RECIPE_VERSION,
        "argv": export_argv(profile, Path("OUT"), shapes),
        "int8_recipe": int8,
    }


def build_artifacts(work: Path, profile: str, shapes: str) -> tuple[Path, dict]:
    """``work/profile/artifacts`` made by ``omama export`` (reused when its recipe matches);
    (the folder, what the export took: seconds, reused or not)."""
    folder = work / f"{shapes}_{profile}"
    art, recipe_path = folder / "artifacts", folder / "recipe.json"
    recipe = recipe_of(profile, shapes)
    if recipe_path.is_file() and (art / "manifest.json").is_file():
        saved = json.loads(recipe_path.read_text())
        if saved.get("recipe") == recipe:
            return art, {"reused": True, "export_s": saved.get("export_s")}
    folder.mkdir(parents=True, exist_ok=True)
    argv = export_argv(profile, art, shapes)
    _log(f"bench_cpu_precisions: omama {' '.join(argv)} (one-off, several minutes)")
    started = time.perf_counter()
    code = "from omama_train.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, *argv], check=False)
    if done.returncode:
        raise OmamaError(f"omama export for profile {profile} failed (exit {done.returncode})")
    export_s = round(time.perf_counter() - started, 1)
    recipe_path.write_text(json.dumps({"recipe": recipe, "export_s": export_s}, indent=1))
    return art, {"reused": False, "export_s": export_s}


# ----------------------------------------------------------------------------- measurements


def measure_latency(manifest, engines: list[Engine], threads: int, repeats: int) -> dict:
    """Per engine label: the ego backbone's latency on one synthetic 700x700 image, or the
    reason it cannot run (see the module docstring for the round-robin)."""
    import numpy as np

    from runtime.preprocess import normalize_image
    from runtime.verification.inputs import synthetic_scene

    role = next(r for r, v in manifest.views.items() if v.kind == "ego")
    size = manifest.views[role].image_size
    image = normalize_image(synthetic_scene(np.random.default_rng(5), size))[None]
    rows, sessions = {}, {}
    try:
        for engine in engines:
            try:
                plan = engine_plan(manifest, engine)
                started = time.perf_counter()
                session, path = open_backbone(manifest, plan, role, threads)
                open_s = time.perf_counter() - started
            except OmamaError as exc:
                rows[engine.label] = {"status": "unavailable", "reason": str(exc)}
                continue
            sessions[engine.label] = session
            rows[engine.label] = {
                "status": "ok",
                "file": path,
                "open_s": round(open_s, 2),
                "providers": list(session.providers),
                "samples_ms": [],
            }
            session.infer({session.inputs[0].name: image})  # warm-up
        for _ in range(repeats):
            for label, session in sessions.items():
                started = time.perf_counter()
                session.infer({session.inputs[0].name: image})
                rows[label]["samples_ms"].append((time.perf_counter() - started) * 1e3)
    finally:
        for session in sessions.values():
            session.close()
    for row in rows.values():
        if row["status"] == "ok":
            row["ms"] = statistics.median(row["samples_ms"])
    return rows


def engine_features(manifest, engine: Engine, agreement, threads: int) -> list[dict]:
    """Per image pair of ``agreement``, both roles' features on ``engine``."""
    plan = engine_plan(manifest, engine)
    sessions = {}
    try:
        for role in ("src", "dst"):
            sessions[role], _ = open_backbone(manifest, plan, role, threads)
        return agreement.features(sessions)
    finally:
        for session in sessions.values():
            session.close()


def measure_fidelity(manifest, engines: list[Engine], sets: int, threads: int) -> dict:
    """Per engine label: argmax agreement (strict and with ties), mean final-mask IoU and the
    similarities' max abs error against the baseline, on ``sets`` candidate sets."""
    import numpy as np

    from export.verify.int8 import PipelineAgreement
    from export.verify.matcher import ViewGeometry
    from runtime.sessions import open_artifact, select_backend
    from runtime.verification.agreement import FEATS
    from runtime.verification.compare import MatcherResult, compare_matcher, mask_iou
    from runtime.verification.tolerances import TOLERANCES

    views = {
        r: ViewGeometry(manifest.views[r].image_size, manifest.views[r].feat_grid)
        for r in ("src", "dst")
    }
    agreement = PipelineAgreement(
        views["src"], views["dst"], manifest.matcher.input, manifest.matcher.dim, sets
    )
    features, rows = {}, {}
    for engine in engines:
        started = time.perf_counter()
        try:
            features[engine.label] = engine_features(manifest, engine, agreement, threads)
        except OmamaError as exc:
            rows[engine.label] = {"status": "unavailable", "reason": str(exc)}
            continue
        _log(f"  features {engine.label}: {time.perf_counter() - started:.0f} s")
    baseline = parse_engine(BASELINE).label
    if baseline not in features:
        raise OmamaError(f"the baseline {BASELINE} cannot run: {rows[baseline]['reason']}")
    features[CONTROL] = noisy(features[baseline], CONTROL_NOISE)
    matcher_entry = manifest.select(manifest.matcher.model, "onnx", "fp32")
    choice = select_backend("onnxruntime", "cpu")
    picks: dict[str, list] = {label: [] for label in features}
    results: dict[str, list] = {label: [] for label in features}
    with open_artifact(choice, manifest, matcher_entry, threads) as matcher:

        def similarities(feats: dict, feeds: dict) -> np.ndarray:
            fed = {FEATS["src"]: feats["src"], FEATS["dst"]: feats["dst"], **feeds}
            return matcher.infer(fed)["similarities"]

        for cand in agreement.candidate_sets():
            expected = similarities(features[baseline][cand.pair], cand.feeds)
            best = int(expected[0].argmax())
            ious = [mask_iou(cand.dst_masks[best], m) for m in cand.dst_masks]
            for label, per_pair in features.items():
                got = (
                    expected if label == baseline else similarities(per_pair[cand.pair], cand.feeds)
                )
                results[label].append(MatcherResult(expected, got, agreement=True))
                pick = int(got[0].argmax())
                picks[label].append((pick == best, ious[pick]))
    for label in features:
        if label == baseline:
            precision = "fp32"
        elif label == CONTROL:
            precision = "int8"  # judged with int8's tie band
        else:
            precision = label.split()[1].split("+")[0]
        tol = TOLERANCES[precision]
        sims, argmax = compare_matcher(results[label], precision, tol, "")[:2]
        same = [p[0] for p in picks[label]]
        rows[label] = {
            "status": "ok",
            "picks": len(same),
            "argmax_agreement": sum(same) / len(same),
            "argmax_agreement_with_ties": argmax.value,
            "tie_band": tol["similarities_max_abs"],
            "mask_iou_mean": float(np.mean([p[1] for p in picks[label]])),
            "similarity_max_abs_error": sims.value,
            **feature_drift(features[baseline], features[label]),
        }
    return rows


def noisy(features: list[dict], relative: float, seed: int = 7) -> list[dict]:
    """``features`` plus seeded Gaussian noise of ``relative`` x each map's standard deviation:
    the control row, saying how much a feature error of that size moves the picks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [
        {role: (f + relative * f.std() * rng.standard_normal(f.shape)).astype(f.dtype)
         for role, f in pair.items()}
        for pair in features
    ]  # fmt: skip


def feature_drift(reference: list[dict], got: list[dict]) -> dict:
    """How far the engine's backbone features are from the baseline's, over every pair and
    both roles: the lowest cosine similarity of a whole feature map (1, D, h, w), and the
    largest abs error over the baseline map's peak abs value."""
    import numpy as np

    cosines, errors = [], []
    for ref_pair, got_pair in zip(reference, got, strict=True):
        for role, ref in ref_pair.items():
            a, b = ref.ravel().astype(np.float64), got_pair[role].ravel().astype(np.float64)
            cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            errors.append(float(np.abs(a - b).max() / np.abs(a).max()))
    return {"feature_cosine_min": min(cosines), "feature_max_err_over_peak": max(errors)}


# ----------------------------------------------------------------------------- report


def compose(latency: dict, fidelity: dict, baseline_label: str) -> dict:
    """One row per engine: latency, speed-up over ``baseline_label``, fidelity and the
    target's PASS/FAIL per criterion (int8 and bf16 rows; None for the others)."""
    base = latency.get(baseline_label, {}).get("ms")
    rows = {}
    for label, lat in latency.items():
        fid = fidelity.get(label, {"status": "unavailable", "reason": "not measured"})
        row = {**lat, "fidelity": fid}
        if lat["status"] == "ok" and base:
            row["speedup"] = base / lat["ms"]
        precision = label.split()[1].split("+")[0]
        if precision in FAST_PRECISIONS and "speedup" in row and fid["status"] == "ok":
            row["target"] = {
                "speedup": row["speedup"] >= TARGET_SPEEDUP,
                "argmax_agreement": fid["argmax_agreement"] >= TARGET_AGREEMENT,
                "mask_iou": fid["mask_iou_mean"] >= TARGET_IOU,
            }
            row["target"]["all"] = all(row["target"].values())
        rows[label] = row
    return rows


def verdict(rows: dict) -> dict:
    """The target of one profile: its fastest int8 / bf16 engine must pass all three
    criteria; also every int8 / bf16 engine that passes them."""
    fast = {label: row for label, row in rows.items() if "target" in row}
    if not fast:
        return {"met": False, "fastest": None, "passing": [], "why": "no int8 or bf16 engine ran"}
    fastest = min(fast, key=lambda label: fast[label]["ms"])
    failed = [k for k, ok in fast[fastest]["target"].items() if k != "all" and not ok]
    return {
        "met": fast[fastest]["target"]["all"],
        "fastest": fastest,
        "speedup": fast[fastest]["speedup"],
        "failed": failed,
        "passing": [label for label, row in fast.items() if row["target"]["all"]],
    }


def _mark(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


def format_report(report: dict) -> str:
    """The printed table: per profile, one line per engine, PASS/FAIL next to each number
    the target is about, then the verdict."""
    machine = report["machine"]
    lines = [
        f"the ego backbone on {machine['cpu_model']}, {report['settings']['threads']} threads; "
        f"load average {machine['load_average_at_start'][0]:.1f} at start, "
        f"{machine['load_average_at_end'][0]:.1f} at end; fidelity on "
        f"{report['settings']['sets']} candidate sets",
    ]
    for profile, section in report["profiles"].items():
        height, width = section["image_size"]
        lines += [
            "",
            f"weight profile {profile}, ego backbone at {height}x{width} px:",
            f"  {'engine':<22} {'ms':>8} {'speed-up':>13} {'argmax':>13} "
            f"{'(ties)':>8} {'mask IoU':>13} {'sim err':>9} {'feat cos':>9}",
        ]
        for label, row in section["rows"].items():
            if row["status"] != "ok":
                lines.append(f"  {label:<22} {row['status']}: {row['reason']}")
                continue
            target = row.get("target", {})
            fid = row["fidelity"]
            speed = f"{row['speedup']:.2f}x {_mark(target.get('speedup')):<4}"
            if fid["status"] == "ok":
                agree_mark = _mark(target.get("argmax_agreement"))
                agree = f"{100 * fid['argmax_agreement']:.1f}% {agree_mark:<4}"
                ties = f"{100 * fid['argmax_agreement_with_ties']:.1f}%"
                iou = f"{fid['mask_iou_mean']:.4f} {_mark(target.get('mask_iou')):<4}"
                err = f"{fid['similarity_max_abs_error']:.1e}"
                cosine = fid.get("feature_cosine_min")
                cos = "-" if cosine is None else f"{cosine:.5f}"
            else:
                agree, ties, iou, err, cos = "-", "-", fid.get("reason", "-"), "-", "-"
            lines.append(
                f"  {label:<22} {row['ms']:>8.0f} {speed:>13} {agree:>13} {ties:>8} "
                f"{iou:>13} {err:>9} {cos:>9}"
            )
        control = section.get("control")
        if control:
            lines.append(
                f"  {CONTROL}: argmax {100 * control['argmax_agreement']:.1f}%, mask IoU "
                f"{control['mask_iou_mean']:.4f}, sim err "
                f"{control['similarity_max_abs_error']:.1e}, feat cos "
                f"{control['feature_cosine_min']:.5f} (how much a feature error moves the picks)"
            )
        v = section["verdict"]
        if v["fastest"] is None:
            lines.append(f"  target: NOT MET ({v['why']})")
            continue
        state = "MET" if v["met"] else f"NOT MET (fails {', '.join(v['failed'])})"
        lines.append(
            f"  target (fastest int8/bf16 >= {TARGET_SPEEDUP}x, argmax >= "
            f"{100 * TARGET_AGREEMENT:.0f}%, IoU >= {TARGET_IOU}): {state}: {v['fastest']} "
            f"{v['speedup']:.2f}x; passing: {', '.join(v['passing']) or 'none'}"
        )
    return "\n".join(lines)


def cpu_flags() -> list[str]:
    """The CPU flags of :data:`CPU_FLAGS` this machine has (int8 and bf16 units)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return [f for f in CPU_FLAGS if f in flags]


def run_profile(work: Path, profile: str, engines, args) -> dict:
    from runtime.manifest import load_manifest

    art, export = build_artifacts(work, profile, args.shapes)
    manifest = load_manifest(art)
    ego = next(v for v in manifest.views.values() if v.kind == "ego")
    load_at_start = load_average()
    _log(f"bench_cpu_precisions: {profile}: latency")
    latency = measure_latency(manifest, engines, args.threads, args.repeats)
    _log(f"bench_cpu_precisions: {profile}: fidelity on {args.sets} candidate sets")
    fidelity = measure_fidelity(manifest, engines, args.sets, args.threads)
    control = fidelity.pop(CONTROL, None)
    rows = compose(latency, fidelity, parse_engine(BASELINE).label)
    return {
        "artifacts": str(art),
        "export": export,
        "weight_profile": manifest.backbone.weights.profile,
        "image_size": list(ego.image_size),
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "rows": rows,
        "verdict": verdict(rows),
        "control": control,
    }


def compose_report(settings: dict, profiles: dict, args, load_at_start, started: float) -> dict:
    """The JSON report of the profiles measured so far."""
    return {
        "benchmark": "bench_cpu_precisions",
        "method": __doc__.split("\n\n", 2)[2].split("\n\nUsage")[0],
        "settings": settings,
        "profiles": {p: profiles[p] for p in PROFILES if p in profiles},
        "complete": all(p in profiles for p in args.profiles),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine_record(
            load_at_start,
            ("onnxruntime", "openvino", "nncf", "numpy"),
            threads=args.threads,
            cpu_flags=cpu_flags(),
        ),
    }


def resumed_profiles(path: Path, settings: dict) -> dict:
    """The profiles an earlier run with the same ``settings`` wrote to ``path`` (none when
    the file is missing or was made with other settings)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != settings:
        _log(f"bench_cpu_precisions: {path} was made with other settings: measuring again")
        return {}
    return dict(earlier.get("profiles", {}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="Threads per session.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per engine (median).")
    parser.add_argument("--sets", type=int, default=200, help="Candidate sets for fidelity.")
    parser.add_argument("--profiles", nargs="+", choices=PROFILES, default=list(PROFILES))
    parser.add_argument(
        "--engines",
        nargs="+",
        default=list(ENGINES),
        help="backend:precision[+bf16]; the first must be the baseline",
    )
    parser.add_argument(
        "--shapes",
        choices=("official", "small"),
        default="official",
        help="--random-shapes of the exports (small: a quick check of the script itself)",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/omama_bench_cpu_precisions"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--resume", action="store_true", help="Keep the profiles --out holds from a run like this"
    )
    args = parser.parse_args(argv)
    engines = [parse_engine(text) for text in args.engines]
    if engines[0].spec != BASELINE:
        raise OmamaError(f"the first engine must be the baseline {BASELINE}")
    load_at_start = load_average()
    started = time.perf_counter()
    settings = {
        "threads": args.threads,
        "repeats": args.repeats,
        "sets": args.sets,
        "engines": [e.spec for e in engines],
        "baseline": BASELINE,
        "model": "dinov2_vitb14_reg, ego 700x700 (latency); both views (fidelity)",
        "export": "omama " + " ".join(export_argv("P", Path("WORK/P/artifacts"), args.shapes)),
        "targets": {
            "speedup": TARGET_SPEEDUP,
            "argmax_agreement": TARGET_AGREEMENT,
            "mask_iou": TARGET_IOU,
        },
    }
    profiles = resumed_profiles(args.out, settings) if args.resume else {}
    for profile in args.profiles:
        if profile in profiles:
            _log(f"bench_cpu_precisions: {profile}: kept from {args.out} (--resume)")
            continue
        profiles[profile] = run_profile(args.work, profile, engines, args)
        report = compose_report(settings, profiles, args, load_at_start, started)
        write_result(args.out, report)  # after each profile: a killed run keeps what it did
    report = compose_report(settings, profiles, args, load_at_start, started)
    write_result(args.out, report)
    print(format_report(report))
    print(f"\nwritten to {args.out}")
    return report


if __name__ == "__main__":
    main()
