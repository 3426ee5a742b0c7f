"""CAM beside SCG on real photos with boxes: a model through spa-eval's evaluation on a wsolevaluation-layout
folder, the figures of the issue that asked for it (GT-known / Top-1 Loc at the card's thresholds and at the
best of the sweep, MaxBoxAccV2 with IoU 0.3 / 0.5 / 0.7, the error breakdown, Top-1 Cls) and the settings
it ran with.

Run from the repository root (writes its section of BENCHMARKS.md and of docs/real-photo-model.md):
    python -m bench.bench_real_photos [--model-dir models/imagenet-lite0] [--data ../shared/realdata/imagenet-val-tune]

The default folder is the 677 ILSVRC2012 validation photos beside the project (../shared/realdata/README.md);
any folder in the wsolevaluation layout works (see LAYOUT).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

from spa_service.card import Method, ModelCard
from spa_service.offline.evaluation.cli import build_report, sweep
from spa_service.offline.evaluation.datasets import DatasetError, open_dataset
from spa_service.offline.evaluation.metrics import (
    ERROR_KINDS,
    MAXBOXACC_IOUS,
    WsolProtocol,
)
from spa_service.offline.evaluation.runner import Evaluation, evaluate
from spa_service.pipeline.localize import Localizer
from spa_service.settings import BUNDLED_PHOTO_MODEL_DIR, Settings
from spa_service.threads import limit_blas_threads

from bench.report import update_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "realdata" / "imagenet-val-tune"
DOC = ROOT / "docs" / "real-photo-model.md"
SECTION = "real-photos"
METHODS: tuple[Method, ...] = ("cam", "scg")
HEADING = (
    "### Real photos: CAM vs SCG (`python -m bench.bench_real_photos`)\n\n"
    "The bundled real-photo model's settings were chosen on this folder: its figures here are in-sample; "
    "the cross-validated ones are in docs/real-photo-model.md.\n\n"
)
LAYOUT = """\
a wsolevaluation-layout folder (as spa-eval reads it):
  DATA/images/...                 the photos
  DATA/test/image_ids.txt         one image path per line, relative to DATA (e.g. images/x.JPEG)
  DATA/test/class_labels.txt      <image>,<class index in the model's label order>
  DATA/test/localization.txt      <image>,x0,y0,x1,y1   (one line per box, pixels of the stored image)
  DATA/test/image_sizes.txt       <image>,width,height"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def at_threshold(evaluation: Evaluation, method: Method, threshold: float) -> dict[str, Any]:
    """GT-known / Top-1 Loc and the error breakdown (% of the images with boxes) at one swept threshold."""
    tally = evaluation.tallies[method]
    [index] = [i for i, t in enumerate(tally.thresholds) if abs(t - threshold) < 1e-9]
    share = 100.0 / tally.box_images
    return {
        "threshold": threshold,
        "gt_known_loc_acc": float(tally.gt_known[index]) * share,
        "top1_loc_acc": float(tally.top1_loc[index]) * share,
        "errors": {kind: float(tally.errors[index, k]) * share
                   for k, kind in enumerate(ERROR_KINDS) if kind != "correct"},
    }


def figures(evaluation: Evaluation, report: dict[str, Any], card: ModelCard) -> dict[str, Any]:
    """Per method: the report's summary plus the figures at the card's threshold."""
    return {m: {**report["methods"][m], "card": at_threshold(evaluation, m, card.box_threshold[m])} for m in METHODS}


def _errors(errors: dict[str, float]) -> str:
    return " / ".join(f"{errors[k]:.1f}" for k in ("cls", "mins", "part", "more", "ot"))


def table(result: dict[str, Any]) -> str:
    """The issue's table, CAM beside SCG, then the settings."""
    f, card, run = result["figures"], result["card"], result["run"]
    served = card["default_method"]
    name = {"cam": "CAM", "scg": "SCG"}
    head = f"| {run['images']} photos (`{run['data_name']}`) | CAM | SCG |"
    rows = [
        head,
        "|---|---|---|",
        f"| GT-known Loc at the card's threshold (what the API serves: cam {card['box_threshold']['cam']}, "
        f"scg {card['box_threshold']['scg']}) | "
        + " | ".join(f"**{f[m]['card']['gt_known_loc_acc']:.1f} %**" for m in METHODS) + " |",
        "| Top-1 Loc at the card's threshold | "
        + " | ".join(f"{f[m]['card']['top1_loc_acc']:.1f} %" for m in METHODS) + " |",
        "| GT-known Loc at the best threshold of the sweep | "
        + " | ".join(f"{f[m]['gt_known_loc_acc']:.1f} % ({f[m]['best_threshold']:g})" for m in METHODS) + " |",
        "| Top-1 Loc at that threshold | " + " | ".join(f"{f[m]['top1_loc_acc']:.1f} %" for m in METHODS) + " |",
        "| MaxBoxAccV2 (wsolevaluation protocol) | "
        + " | ".join(f"{f[m]['maxboxacc_v2_acc']:.1f}" for m in METHODS) + " |",
    ]
    for iou in MAXBOXACC_IOUS:
        rows.append(f"| accuracy at IoU {iou:g} (best CAM threshold) | "
                    + " | ".join(f"{f[m]['maxboxacc_acc'][f'{iou:g}']['acc']:.1f}" for m in METHODS) + " |")
    rows += [
        "| errors at the card's threshold, % (Cls / M-Ins / Part / More / OT) | "
        + " | ".join(_errors(f[m]["card"]["errors"]) for m in METHODS) + " |",
        "| Top-1 / Top-5 Cls | " + " | ".join(f"{f[m]['top1_cls_acc']:.1f} % / {f[m]['top5_cls_acc']:.1f} %"
                                             for m in METHODS) + " |",
    ]
    scg = card["scg"]
    settings = [
        "",
        (f"Served by default (`default_method`): **{name[served]}**. Model `{card['name']}` "
        f"(`{card['arch']}`, onnx sha256 {card['onnx_sha256'][:12]}..., input {card['input_size'][0]} x "
        f"{card['input_size'][1]}, maps {card['map_size'][0]} x {card['map_size'][1]}); SCG mode {run['scg_mode']}, "
        f"fo_th {scg['fo_th']}, so_th {scg['so_th']}, so_weight {scg['so_weight']}, order {scg['order']}, "
        f"fg_th {scg['fg_th']}, bg_th {scg['bg_th']}. Data: {run['images']} images, {run['boxes']} boxes "
        f"(`{run['data']}`, {run['split']} split). Loc figures: {run['spa_protocol']}; box thresholds swept "
        f"{run['thresholds'][0]:g} .. {run['thresholds'][-1]:g} (plus the card's), the best by {run['selection']}. "
        f"MaxBoxAccV2: {run['wsol_protocol']}. Error breakdown: the SPA authors' (Cls, multiple instances, part, "
        f"more, other). Run {run['date']} on {run['cpu']}, {run['seconds']:.0f} s: `{run['command']}`."),
    ]
    return "\n".join(rows + settings) + "\n"


def run(model_dir: Path, data: Path, split: str, batch_size: int) -> dict[str, Any]:
    settings = Settings(model_dir=model_dir)
    localizer = Localizer.from_settings(settings)
    dataset = open_dataset(data, split=split)
    card = localizer.card
    thresholds = sweep(None, card, METHODS)
    started = datetime.datetime.now(datetime.UTC)
    evaluation = evaluate(localizer, dataset.samples, methods=METHODS, thresholds=thresholds,
                          protocol=WsolProtocol(), batch_size=batch_size, max_pixels=settings.max_image_pixels)
    seconds = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    report = build_report(evaluation, card, dataset, model_dir, WsolProtocol())
    try:
        shown = data.resolve().relative_to(ROOT.parent)
        data_name = f"../{shown}"
    except ValueError:
        data_name = str(data)
    return {
        "card": card.public() | {"labels": None},
        "figures": figures(evaluation, report, card),
        "run": {
            "images": len(dataset.samples),
            "boxes": sum(len(s.boxes) for s in dataset.samples),
            "data": data_name,
            "data_name": data.resolve().name,
            "split": split,
            "scg_mode": settings.scg_mode,
            "thresholds": thresholds,
            "selection": report["best_threshold_rule"],
            "spa_protocol": report["protocols"]["spa"],
            "wsol_protocol": report["protocols"]["wsol"],
            "date": started.date().isoformat(),
            "cpu": cpu_name(),
            "seconds": seconds,
            "command": "python -m bench.bench_real_photos" + ("" if model_dir == BUNDLED_PHOTO_MODEL_DIR
                                                               else f" --model-dir {model_dir}"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_real_photos", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_PHOTO_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=DATA, help=f"wsolevaluation-layout folder (default {DATA})")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--no-write", action="store_true", help="print the table; leave BENCHMARKS.md and the doc")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"bench_real_photos: {args.data} does not exist. Give --data {LAYOUT}", file=sys.stderr)
        return 2
    limit_blas_threads()
    try:
        result = run(args.model_dir, args.data, args.split, args.batch_size)
    except DatasetError as exc:
        print(f"bench_real_photos: {exc}. Give --data {LAYOUT}", file=sys.stderr)
        return 2
    markdown = table(result)
    print(markdown)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if not args.no_write:
        update_section(SECTION, HEADING + markdown, ROOT / "BENCHMARKS.md")
        update_section(SECTION, markdown, DOC)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
