"""`spa-eval`: evaluate an exported model on a data set with the reference's metrics.

    spa-eval [--model-dir DIR] --data DIR [--split test] [--method cam,scg] [--thresholds 0.1,0.2 ...]
             [--wsol-protocol wsol|original] [--single-contour]
             [--batch-size B] [--out report.json] [--calibrate] [--examples N out.png]

Prints one table per protocol and direction (the paper's Loc errors; wsolevaluation's accuracies; the
mask IoU; the error breakdown), each saying which in its header; writes the figures to `--out` under
keys that end in _acc or _err, with the protocol of each; with `--calibrate` stores each method's best
box threshold in the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError
from spa_service.argtypes import positive_int
from spa_service.card import Method, ModelCard, write_card
from spa_service.errors import ModelLoadError
from spa_service.pipeline.localize import Localizer
from spa_service.settings import BUNDLED_PHOTO_MODEL_DIR, Settings
from tqdm import tqdm

from .datasets import Dataset, DatasetError, open_dataset
from .examples import write_grid
from .metrics import WsolProtocol
from .runner import Evaluation, evaluate
from .tally import PEAK_PROTOCOL, SELECTION, SPA_PROTOCOL, protocol_of

log = logging.getLogger("spa_service.eval")

EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
METHOD_NAMES = {"cam": "CAM", "scg": "+SCG"}


def _methods(text: str) -> list[Method]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in ("cam", "scg")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"methods are cam and/or scg, comma-separated; got {text!r}")
    return cast(list[Method], list(dict.fromkeys(names)))


def _thresholds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds are numbers in [0, 1]; got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spa-eval",
        description="Evaluate an exported SPA model on a data set (CUB-200-2011 or wsolevaluation layout): "
        "Top-1/Top-5/GT-known Loc, MaxBoxAccV2, Peak-IoU, PxAP and the error breakdown, per method. "
        "SPA_PROVIDERS, SPA_INTRA_OP_THREADS and SPA_SCG_MODE apply.",
    )
    parser.add_argument(
        "--model-dir", type=Path, help=f"directory with model.onnx and model.json (SPA_MODEL_DIR; default "
        f"{BUNDLED_PHOTO_MODEL_DIR})"
    )
    parser.add_argument("--data", type=Path, required=True, help="data set directory")
    parser.add_argument("--split", choices=("train", "test", "all"), default="test", help="default %(default)s")
    parser.add_argument(
        "--image-root", type=Path, help="wsolevaluation layout: where image paths start (default --data)"
    )
    parser.add_argument(
        "--method", type=_methods, default=["cam", "scg"],
        help="cam, scg or cam,scg (default: both, to compare; the report names the card's default_method)",
    )
    parser.add_argument(
        "--thresholds",
        type=_thresholds,
        nargs="+",
        help="box thresholds to sweep, e.g. 0.1,0.25,0.3 (default 0.05..0.95 by 0.05, plus the card's)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="images per backbone call (default %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--wsol-protocol",
        choices=("wsol", "original"),
        default="wsol",
        help="how MaxBoxAccV2 and PxAP are scored: wsol (default), as wsolevaluation computes them on its "
        "224 x 224 grid; original, the project's convention at the original image size",
    )
    parser.add_argument(
        "--single-contour",
        action="store_true",
        help="MaxBoxAccV2 with the largest contour's box only (wsolevaluation's multi_contour_eval=False)",
    )
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--calibrate", action="store_true", help="store each method's best threshold in the model card")
    parser.add_argument(
        "--examples", nargs=2, metavar=("N", "OUT_PNG"), help="draw N images with CAM and SCG heatmaps and boxes"
    )
    return parser


def sweep(requested: Sequence[float] | None, card: ModelCard, methods: Sequence[Method]) -> list[float]:
    """The thresholds to evaluate: those asked for, or the default sweep plus the card's current ones."""
    values = set(requested or DEFAULT_SWEEP)
    if not requested:
        values |= {card.box_threshold[m] for m in methods}
    return sorted(values)


def build_report(
    evaluation: Evaluation, card: ModelCard, dataset: Dataset, model_dir: Path, protocol: WsolProtocol
) -> dict[str, Any]:
    methods = {name: tally.summary() for name, tally in evaluation.tallies.items()}
    for name, summary in methods.items():
        summary["card_threshold"] = card.box_threshold[cast(Method, name)]
    return {
        "model": {"dir": str(model_dir), "name": card.name, "arch": card.arch, "num_classes": card.num_classes,
                  "default_method": card.default_method},
        "data": {
            "dir": str(dataset.root),
            "layout": dataset.layout,
            "split": dataset.split,
            "images": len(dataset.samples),
            "with_masks": dataset.mask_count,
        },
        "box_mode": "union",
        "best_threshold_rule": SELECTION,
        # Which protocol computed each figure (protocol_of), and what each protocol is.
        "protocols": {"spa": SPA_PROTOCOL, protocol.name: protocol.describe(), "lid": PEAK_PROTOCOL},
        "wsol_protocol": {
            "name": protocol.name,
            "multi_contour": protocol.multi_contour,
            "cam_step": protocol.cam_step,
        },
        "protocol_of": protocol_of(protocol),
        "methods": methods,
    }


def _error(value: float | None) -> str:
    return "-" if value is None else f"{100.0 - value:.2f}"


def _value(value: float | int | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_table(report: dict[str, Any]) -> str:
    """Four tables, one convention each (said in its header), one row per method: the paper's Loc and
    Cls errors; MaxBoxAccV2 and PxAP; Peak-IoU; the top-1 error breakdown. Then the empty heatmaps."""
    data, model, methods = report["data"], report["model"], report["methods"]
    wsol = report["wsol_protocol"]["name"]
    names = {name: METHOD_NAMES.get(name, name) for name in methods}
    lines = [
        f"{model['name']} on {data['dir']} ({data['split']} split, {data['images']} images, "
        f"{data['with_masks']} with masks); the model serves {model['default_method'].upper()} "
        "when a request names no method",
        "",
        "Localization and classification errors in %, lower is better",
        f"  protocol spa: {report['protocols']['spa']}",
        f"{'method':<7} {'thr':>5}  {'Top-1 Loc':>9} {'Top-5 Loc':>9} {'GT-known':>9}  "
        f"{'Top-1 Cls':>9} {'Top-5 Cls':>9}",
    ]
    for name, s in methods.items():
        lines.append(
            f"{names[name]:<7} {_value(s['best_threshold']):>5}  {_error(s['top1_loc_acc']):>9} "
            f"{_error(s['top5_loc_acc']):>9} {_error(s['gt_known_loc_acc']):>9}  "
            f"{_error(s['top1_cls_acc']):>9} {_error(s['top5_cls_acc']):>9}"
        )
    lines += [
        f"thr: the best box threshold ({report['best_threshold_rule']}); Loc figures are at it",
        "",
        "MaxBoxAccV2 and PxAP, accuracies in %, higher is better",
        f"  protocol {wsol}: {report['protocols'][wsol]}",
        f"{'method':<7} {'MaxBoxAccV2':>11} {'IoU 0.3':>8} {'IoU 0.5':>8} {'IoU 0.7':>8} {'PxAP':>7}",
    ]
    for name, s in methods.items():
        per_iou = s["maxboxacc_acc"] or {}
        accs = " ".join(f"{_value(per_iou[k]['acc'] if k in per_iou else None):>8}" for k in ("0.3", "0.5", "0.7"))
        lines.append(f"{names[name]:<7} {_value(s['maxboxacc_v2_acc']):>11} {accs} {_value(s['pxap']):>7}")
    lines += [
        "",
        "Peak-IoU in %, higher is better",
        f"  protocol lid: {report['protocols']['lid']}",
        f"{'method':<7} {'Peak-IoU':>9} {'Peak-T':>7}",
    ]
    for name, s in methods.items():
        lines.append(f"{names[name]:<7} {_value(s['peak_iou']):>9} {_value(s['peak_t'], 'd'):>7}")
    lines += [
        "",
        "Top-1 error breakdown in % of the images with boxes, lower is better (protocol spa, at thr)",
        f"{'method':<7} {'Cls':>6} {'M-Ins':>6} {'Part':>6} {'More':>6} {'OT':>6}",
    ]
    for name, s in methods.items():
        e = s["errors"] or {}
        kinds = " ".join(f"{_value(e.get(f'{k}_err')):>6}" for k in ("cls", "mins", "part", "more", "ot"))
        lines.append(f"{names[name]:<7} {kinds}")
    empty = ", ".join(f"{names[name]} {s['empty_heatmaps']}" for name, s in methods.items())
    lines += [
        "",
        f"Empty heatmaps (the ground-truth class's heatmap all zero, as an all-negative class map makes it): {empty} "
        f"of {data['images']} images",
    ]
    return "\n".join(lines)


def calibrate(model_dir: Path, card: ModelCard, report: dict[str, Any]) -> dict[str, float]:
    """Write each evaluated method's best threshold into the card's box_threshold; nothing else changes
    (the ONNX file and its sha256 stay valid). Returns the new box_threshold."""
    thresholds = dict(card.box_threshold)
    for name, summary in report["methods"].items():
        if summary["best_threshold"] is not None:
            thresholds[name] = summary["best_threshold"]
    write_card(card.model_copy(update={"box_threshold": thresholds}), model_dir)
    return thresholds


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    examples = None
    if args.examples:
        count, path = args.examples
        if not count.isdigit() or int(count) < 1:
            print(f"spa-eval: error: --examples N must be a positive integer, got {count!r}", file=sys.stderr)
            return EXIT_USAGE
        examples = (int(count), Path(path))
    requested = [t for group in args.thresholds for t in group] if args.thresholds else None
    protocol = WsolProtocol(name=args.wsol_protocol, multi_contour=not args.single_contour)
    try:
        settings = Settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
        localizer = Localizer.from_settings(settings)
        dataset = open_dataset(args.data, split=args.split, image_root=args.image_root)
        card = localizer.card
        log.info(
            "evaluating %s on %d images (%s layout, %s split)",
            card.name, len(dataset.samples), dataset.layout, args.split,
        )
        with tqdm(total=len(dataset.samples), unit="img", disable=args.no_progress, dynamic_ncols=True,
                  file=sys.stderr) as bar:
            evaluation = evaluate(
                localizer,
                dataset.samples,
                methods=args.method,
                thresholds=sweep(requested, card, args.method),
                protocol=protocol,
                batch_size=args.batch_size,
                max_pixels=settings.max_image_pixels,
                examples=examples[0] if examples else 0,
                on_batch=bar.update,
            )
    except (ModelLoadError, DatasetError, ValidationError) as exc:
        print(f"spa-eval: error: {exc}".replace("\n", " "), file=sys.stderr)
        return EXIT_USAGE
    report = build_report(evaluation, card, dataset, settings.model_dir, protocol)
    print(format_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.out)
    if examples:
        best = {m: s["best_threshold"] if s["best_threshold"] is not None else card.box_threshold[m]
                for m, s in report["methods"].items()}
        write_grid(evaluation.examples, best, card.labels, examples[1])
        log.info("wrote %d examples to %s", len(evaluation.examples), examples[1])
    if args.calibrate:
        if not any(s["best_threshold"] is not None for s in report["methods"].values()):
            print("spa-eval: error: --calibrate needs a data set with boxes", file=sys.stderr)
            return EXIT_FAILURE
        new = calibrate(settings.model_dir, card, report)
        log.info("calibrated %s: box_threshold %s", settings.model_dir, json.dumps(new))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
