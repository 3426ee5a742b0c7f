"""Rows -> COCO detections, checked on hand-made rows and values."""

from __future__ import annotations

from spa_service.offline.collection.coco import coco_bbox, coco_detections


def test_inclusive_box_to_coco_xywh() -> None:
    assert coco_bbox([0, 0, 0, 0]) == [0, 0, 1, 1]
    assert coco_bbox([10, 20, 19, 24]) == [10, 20, 10, 5]


def test_images_sorted_by_path_errors_left_out_one_annotation_per_box() -> None:
    rows = [
        {"path": "z.jpg", "width": 30, "height": 20, "class_ids": [1], "scores": [0.5],
         "boxes": [[[0, 0, 9, 9], [20, 5, 29, 19]]], "error_code": None},
        {"path": "bad.jpg", "width": None, "height": None, "class_ids": [], "scores": [], "boxes": [],
         "error_code": "not_an_image"},
        {"path": "a.jpg", "width": 8, "height": 6, "class_ids": [0, 1], "scores": [0.75, 0.25],
         "boxes": [[[1, 1, 2, 2]], []], "error_code": None},
    ]
    coco = coco_detections(rows, ["cat", "dog"], model="m")
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert coco["images"] == [
        {"id": 1, "file_name": "a.jpg", "width": 8, "height": 6},
        {"id": 2, "file_name": "z.jpg", "width": 30, "height": 20},
    ]
    assert [(a["id"], a["image_id"], a["category_id"], a["bbox"], a["area"], a["score"]) for a in coco["annotations"]] == [
        (1, 1, 1, [1, 1, 2, 2], 4, 0.75),
        (2, 2, 2, [0, 0, 10, 10], 100, 0.5),
        (3, 2, 2, [20, 5, 10, 15], 150, 0.5),
    ]
