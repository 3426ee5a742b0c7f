"""`spa-eval`: evaluate an exported model on a data set with the reference's metrics.

    spa-eval --model-dir DIR --data DIR [--split test] [--method cam,scg] [--thresholds 0.1,0.2 ...]
             [--batch-size B] [--out report.json] [--calibrate] [--examples N out.png]

Prints a table in the paper's terms (errors, 100 - accuracy), writes accuracies to `--out`, and with
`--calibrate` stores each method's best box threshold in the model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from pydantic import ValidationError

from ..card import Method, ModelCard, write_card
from ..errors import ModelLoadError
from ..localize import Localizer
from ..settings import Settings
from .datasets import Dataset, DatasetError, open_dataset
from .examples import write_grid
from .runner import Evaluation, evaluate
from .tally import SELECTION

log = logging.getLogger("spa_service.eval")

EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_SWEEP = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95
METHOD_NAMES = {"cam": "CAM", "scg": "+SCG"}


class Progress:
    """A one-line progress bar on a terminal; elsewhere (logs, CI) a line every 10%."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.done, self.width = total, 0, width
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()
        self._next_line = 0.1

    def __call__(self, n: int) -> None:
        self.done += n
        fraction = self.done / self.total if self.total else 1.0
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        if self.tty:
            filled = int(fraction * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            end = "\n" if self.done >= self.total else ""
            line = f"\rspa-eval [{bar}] {self.done}/{self.total} {rate:.1f} img/s"
            print(line, end=end, file=self.stream, flush=True)
        elif fraction >= self._next_line or self.done >= self.total:
            print(f"spa-eval: {self.done}/{self.total} images ({rate:.1f} img/s)", file=self.stream, flush=True)
            self._next_line = (int(fraction * 10) + 1) / 10


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


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spa-eval",
        description="Evaluate an exported SPA model on a data set (CUB-200-2011 or wsolevaluation layout): "
        "Top-1/Top-5/GT-known Loc, MaxBoxAccV2, Peak-IoU, PxAP and the error breakdown, per method. "
        "SPA_PROVIDERS, SPA_INTRA_OP_THREADS and SPA_SCG_MODE apply.",
    )
    parser.add_argument("--model-dir", type=Path, required=True, help="directory with model.onnx and model.json")
    parser.add_argument("--data", type=Path, required=True, help="data set directory")
    parser.add_argument("--split", choices=("train", "test", "all"), default="test", help="default %(default)s")
    parser.add_argument(
        "--image-root", type=Path, help="wsolevaluation layout: where image paths start (default --data)"
    )
    parser.add_argument("--method", type=_methods, default=["cam", "scg"], help="cam, scg or cam,scg (default)")
    parser.add_argument(
        "--thresholds",
        type=_thresholds,
        nargs="+",
        help="box thresholds to sweep, e.g. 0.1,0.25,0.3 (default 0.05..0.95 by 0.05, plus the card's)",
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=16, help="images per backbone call (default %(default)s)"
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


def build_report(evaluation: Evaluation, card: ModelCard, dataset: Dataset, model_dir: Path) -> dict[str, Any]:
    methods = {name: tally.summary() for name, tally in evaluation.tallies.items()}
    for name, summary in methods.items():
        summary["card_threshold"] = card.box_threshold[cast(Method, name)]
    return {
        "model": {"dir": str(model_dir), "name": card.name, "arch": card.arch, "num_classes": card.num_classes},
        "data": {
            "dir": str(dataset.root),
            "layout": dataset.layout,
            "split": dataset.split,
            "images": len(dataset.samples),
            "with_masks": dataset.mask_count,
        },
        "box_mode": "union",
        "best_threshold_rule": SELECTION,
        "methods": methods,
    }


def _error(value: float | None) -> str:
    return "-" if value is None else f"{100.0 - value:.2f}"


def _value(value: float | int | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def format_table(report: dict[str, Any]) -> str:
    """The paper's layout: localization and classification errors, then the mask metrics and the
    error breakdown of the top-1 prediction, one row per method."""
    data, model = report["data"], report["model"]
    lines = [
        f"{model['name']} on {data['dir']} ({data['split']} split, {data['images']} images, "
        f"{data['with_masks']} with masks); errors in %, lower is better",
        f"{'method':<7} {'thr':>5}  {'Top-1 Loc':>9} {'Top-5 Loc':>9} {'GT-known':>9}  "
        f"{'Top-1 Cls':>9} {'Top-5 Cls':>9}",
    ]
    for name, s in report["methods"].items():
        lines.append(
            f"{METHOD_NAMES.get(name, name):<7} {_value(s['best_threshold']):>5}  {_error(s['top1_loc']):>9} "
            f"{_error(s['top5_loc']):>9} {_error(s['gt_known_loc']):>9}  "
            f"{_error(s['top1_cls']):>9} {_error(s['top5_cls']):>9}"
        )
    lines += ["", f"{'method':<7} {'MaxBoxAccV2':>11} {'Peak-IoU':>9} {'Peak-T':>7} {'PxAP':>7}   (accuracies in %)"]
    for name, s in report["methods"].items():
        lines.append(
            f"{METHOD_NAMES.get(name, name):<7} {_value(s['maxboxacc_v2']):>11} {_value(s['peak_iou']):>9} "
            f"{_value(s['peak_t'], 'd'):>7} {_value(s['pxap']):>7}"
        )
    header = f"{'method':<7} {'Cls':>6} {'M-Ins':>6} {'Part':>6} {'More':>6} {'OT':>6}"
    lines += ["", f"{header}   (top-1 errors, % of images)"]
    for name, s in report["methods"].items():
        e = s["errors"] or {}
        lines.append(
            f"{METHOD_NAMES.get(name, name):<7} "
            + " ".join(f"{_value(e.get(k)):>6}" for k in ("cls", "mins", "part", "more", "ot"))
        )
    lines.append(f"thr: the best box threshold ({report['best_threshold_rule']}); Loc figures are at it")
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
    try:
        settings = Settings(model_dir=args.model_dir)
        localizer = Localizer.from_settings(settings)
        dataset = open_dataset(args.data, split=args.split, image_root=args.image_root)
        card = localizer.card
        log.info(
            "evaluating %s on %d images (%s layout, %s split)",
            card.name, len(dataset.samples), dataset.layout, args.split,
        )
        evaluation = evaluate(
            localizer,
            dataset.samples,
            methods=args.method,
            thresholds=sweep(requested, card, args.method),
            batch_size=args.batch_size,
            max_pixels=settings.max_image_pixels,
            examples=examples[0] if examples else 0,
            on_batch=Progress(len(dataset.samples)),
        )
    except (ModelLoadError, DatasetError, ValidationError) as exc:
        print(f"spa-eval: error: {exc}".replace("\n", " "), file=sys.stderr)
        return EXIT_USAGE
    report = build_report(evaluation, card, dataset, args.model_dir)
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
        new = calibrate(args.model_dir, card, report)
        log.info("calibrated %s: box_threshold %s", args.model_dir, json.dumps(new))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
