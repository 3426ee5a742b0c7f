"""How numpy's BLAS shares the cores with onnxruntime, for every entry point that runs both."""

from __future__ import annotations

import os

from threadpoolctl import threadpool_limits


def limit_blas_threads() -> None:
    """One BLAS thread for numpy (SCG, map resizing), unless OPENBLAS_NUM_THREADS says otherwise.

    onnxruntime already spreads each backbone call over every core; BLAS threads on SCG's small
    matrices only fight it and the decode threads for the cores, and OpenBLAS degrades badly when
    it loses that fight (VGG16, 2 busy cores: SCG 60-140 ms per batch of 2 with its threads,
    2-8 ms with one). The limit applies to the whole process.
    """
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        threadpool_limits(limits=1, user_api="blas")
