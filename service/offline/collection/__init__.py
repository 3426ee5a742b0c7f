"""`spa-batch`: localize a whole collection of images (a folder tree or a manifest) into Parquet or JSONL.

The data flows: inputs (paths) -> worker (read, decode, localize, one row per image) -> engine
(in-process or on Ray Data) -> store (one part file per batch) -> COCO file.
"""
