"""Validation: the matcher scored on the full candidate set of every validation pair.

No sampler: the best candidate becomes the predicted mask, sigmoid(best cosine) the
confidence, and the official metrics (``runtime.evaluate``, ``omama`` protocol) give IoU,
shape accuracy, location score and balanced accuracy. The same is done on a fixed subset of
training pairs, so the train/val IoU gap shows overfitting. Frames are sharded by rank;
rank 0 scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omama_train.train.distributed import all_gather, broadcast


def predict_frames(model, dataset, indices: Sequence[int], workers: int, amp_ctx) -> list[tuple]:
    """Predictions for the validation frames ``indices``: (take, obj, src_cam, dst_cam,
    frame, RLE, confidence) per query, the best candidate of the frame's full set."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from omama_train.dataset import identity_collate
    from omama_train.models.matcher import predict

    out: list[tuple] = []
    if not indices:
        return out
    loader = DataLoader(
        Subset(dataset, list(indices)),
        batch_size=None,
        num_workers=workers,
        collate_fn=identity_collate,
        generator=torch.Generator().manual_seed(0),  # leaves the global RNG of training alone
    )
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for item in loader:
            n = int(item.cand_bits.shape[0])
            dst_feats = dst_desc = None
            if n:
                with amp_ctx():
                    dst_feats = model.features(item.dst_input[None], "dst")
                    dst_desc = model.descriptors(
                        dst_feats, item.cand_bits[None], item.cand_boxes[None], "dst"
                    )
            for src_cam, src_input, objects, bits, boxes in item.groups:
                if not n:
                    out += [
                        (item.take, o, src_cam, item.dst_cam, item.frame, item.empty_rle, 0.0)
                        for o in objects
                    ]
                    continue
                with amp_ctx():
                    src_feats = model.features(src_input[None], "src")
                    src_desc = model.descriptors(src_feats, bits[None], boxes[None], "src")
                    sim = model.matcher(src_desc[0][:, None], dst_desc, src_feats, dst_feats)
                best, confidence, _ = predict(sim.float())
                for obj, b, c in zip(objects, best.tolist(), confidence.tolist(), strict=True):
                    out.append(
                        (item.take, obj, src_cam, item.dst_cam, item.frame, item.cand_rles[b], c)
                    )
    model.train(was_training)
    return out


def score_predictions(
    predictions: Sequence[tuple], root: Path, pairs: Sequence, direction: str, workers
) -> tuple[dict, dict]:
    """(results JSON dict, official report) of gathered predictions over ``pairs``."""
    from omama_train.data.gt import build_gt
    from runtime.egoexo import ProcessedRoot, results_key
    from runtime.evaluate import build_report, evaluate
    from runtime.results import add_prediction, new_results

    results = new_results(direction)
    for take, obj, src, dst, frame, rle_dict, confidence in sorted(
        predictions, key=lambda p: (p[0], p[1], p[2], p[4])
    ):
        add_prediction(results, take, obj, src, dst, frame, rle_dict, confidence)
    gt, _ = build_gt(ProcessedRoot(root), pairs, direction)
    evaluations = evaluate(
        gt["annotations"], results[results_key(direction)]["results"], direction, "omama", workers
    )
    return results, build_report(evaluations, direction, "omama")


def run_validation(model, dataset, pairs, config, ctx, amp_ctx) -> tuple[dict | None, dict]:
    """Validate on all ranks (frames sharded by rank); rank 0 scores. Returns (results on
    rank 0 else None, aggregated metrics on every rank)."""
    mine = list(range(ctx.rank, len(dataset), ctx.world))
    predictions = predict_frames(model, dataset, mine, config.workers, amp_ctx)
    gathered = all_gather(ctx, predictions)
    results, metrics = None, None
    if ctx.main:
        flat = [p for part in gathered for p in part]
        results, report = score_predictions(
            flat, config.root, pairs, config.direction, config.eval_workers
        )
        metrics = {**report["aggregated_metrics"], "observations": report["counts"]["observations"]}
        metrics["report"] = report
    metrics = broadcast(ctx, metrics)
    return results, metrics


def score_epoch(model, val_set, gap_set, data, config, ctx, amp_ctx) -> tuple:
    """Validation (results on rank 0, metrics) and the IoU on the fixed training subset."""
    val_results, val = run_validation(model, val_set, data.val_pairs, config, ctx, amp_ctx)
    train_iou = None
    if len(gap_set):
        _, gap = run_validation(model, gap_set, data.gap_pairs, config, ctx, amp_ctx)
        train_iou = gap.get("iou")
    return val_results, val, train_iou
