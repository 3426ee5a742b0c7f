"""SCG: structure affinity of feature blocks and the per-class self-correlation maps.

Written once against an array namespace (numpy or cupy), batched over images:
  normalize_cam        step 8
  resize.roundtrip_maps   step 9, per image (it depends on the image's original size)
  structure_affinity   steps 1-7: one HW x HW matrix per image, shared by all its classes
  scg_maps             steps 10-13 up to the final resize (resize.resize_maps)

Step numbers refer to docs/reference.md section 4, `reference` mode (the default): what the
authors' released VGG16 code computes. Their removed Inception-V3 code normalised the
high-order map differently; reference mode applies the VGG16 steps to every backbone.
`paper` mode follows the paper's Eq. 6-14 instead (see `structure_affinity`, `scg_maps`).

Everything is float32, except that float64 inputs are computed in float64 (the tests use it
to check the algebra against a loop implementation without float32 rounding in the way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ..arrays import Array, array_namespace, float_dtype
from ..card import ScgParams

ScgMode = Literal["reference", "paper"]

_EPS = 1e-10  # guard of norms, min-max and the later column sums (steps 1, 5, 7, 8, 11-13)
_EPS_FIRST = 1e-5  # guard of the first-order column sums (steps 3, 4)


def _minmax(x: Array, axis: int, out: Array | None = None) -> Array:
    """(x - min) / (max - min + 1e-10) along `axis`: in [0, 1], 0 for a constant. `out` may be x."""
    xp = array_namespace(x)
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    out = xp.subtract(x, lo, out=out)
    out /= hi - lo + _EPS
    return out


def _column_sums(x: Array) -> Array:
    """(N, HW, HW) -> (N, 1, HW): the sum over i of x[n, i, j], shaped to broadcast."""
    return x.sum(axis=-2, keepdims=True)


def _diagonal(x: Array) -> Array:
    """A writable view of x[n, i, i] as (N, HW), for a C-contiguous (N, HW, HW) array."""
    n, hw, _ = x.shape
    return x.reshape(n, hw * hw)[:, :: hw + 1]


def _transpose(x: Array) -> Array:
    return x.swapaxes(-1, -2)


def normalize_cam(class_maps: Array) -> Array:
    """Step 8: relu, then min-max per map (+1e-10). (..., h, w) -> same shape in [0, 1]."""
    xp = array_namespace(class_maps)
    cams = xp.maximum(xp.asarray(class_maps, dtype=float_dtype(xp, class_maps)), 0)
    flat = cams.reshape(*cams.shape[:-2], -1)
    return _minmax(flat, axis=-1, out=flat).reshape(cams.shape)


def _cosine(block: Array, out: Array) -> Array:
    """Steps 1-2 / Eq. 6: (N, C, h, w) features -> cosine similarity of positions in `out` (N, HW, HW).

    X^T X of the raw features (one shared buffer, so BLAS uses syrk), then scaled by
    1 / (norm + 1e-10) on both sides, the norms being the square roots of its diagonal: no
    normalised copy of the features. Zero feature vectors get similarity 0 with everything.
    """
    xp = array_namespace(block)
    n, c, h, w = block.shape
    x = xp.asarray(block, dtype=out.dtype).reshape(n, c, h * w)
    xp.matmul(_transpose(x), x, out=out)
    inv_norms = 1.0 / (xp.sqrt(_diagonal(out)) + _EPS)
    out *= inv_norms[:, :, None]
    out *= inv_norms[:, None, :]
    return out


def _reference_block(block: Array, params: ScgParams, out: Array, half: Array, high: Array) -> None:
    """Reference steps 1-7 for one block: (N, C, h, w) -> S_block in `out` (N, HW, HW).

    `half` and `high` are scratch buffers of the same shape.
    """
    xp = array_namespace(block)
    a = _cosine(block, out)
    hw = a.shape[-1]
    xp.multiply(a, a >= params.fo_th, out=a)  # step 2: relu and the threshold (fo_th >= 0)
    inv_first = 1.0 / (_column_sums(a) + _EPS_FIRST)  # step 3, applied once A is no longer needed
    diagonal = _diagonal(a).copy()
    _diagonal(a)[...] = 0  # step 4: a is now A2 (symmetric up to rounding)
    inv_cols = 1.0 / (_column_sums(a) + _EPS_FIRST)  # P = A2 * inv_cols (column scaling)
    if params.order == 1:
        ho = xp.multiply(a, inv_cols, out=half)
    else:
        # Step 5. P @ P = A2 D A2 D with D = diag(inv_cols), and A2 D A2 = B B^T for
        # B = A2 sqrt(D): a symmetric product, half the flops of a general one.
        xp.multiply(a, xp.sqrt(inv_cols), out=half)
        ho = xp.matmul(half, _transpose(half), out=high)
        # Column j of P @ P is ho[:, j] * inv_cols[j]; its normalisation folds into one scale.
        ho *= inv_cols / (_column_sums(ho) * inv_cols + _EPS)
        if params.order > 2:
            p = xp.multiply(a, inv_cols, out=half)
            spare = xp.empty_like(ho)
            for _ in range(params.order - 2):
                xp.matmul(ho, p, out=spare)
                spare /= _column_sums(spare) + _EPS
                ho, spare = spare, ho
    xp.copyto(ho, 0, where=ho < params.so_th / hw)  # step 6
    # Step 7. max(FO, w HO) / its column sums == max(FO / w, HO) / theirs (w > 0; up to the
    # 1e-10 guard), so the weight folds into FO's column scale: no pass over HO.
    _diagonal(a)[...] = diagonal  # back to A: FO = A * inv_first
    a *= inv_first / params.so_weight
    xp.maximum(a, ho, out=a)
    a /= _column_sums(a) + _EPS


def _paper_block(block: Array, params: ScgParams, out: Array, first: Array, high: Array) -> None:
    """Paper Eq. 6-11 for one block: (N, C, h, w) -> HSC in `out` (N, HW, HW), values in [0, 1].

    SC1 = relu(cosine). For order h >= 2, S^h = C0^h / HW^(h-1), C0 = the cosine with a zero
    diagonal (so every sum skips k = i and k = j: Eq. 8, and the supplementary's general order),
    min-max normalised along each row over k (Eq. 9, +1e-10); HSC = max(SC1, S^h) (Eq. 11).
    Order 1 is SC1 alone. `first` and `high` are scratch buffers of the same shape.
    """
    xp = array_namespace(block)
    cosine = _cosine(block, out)
    hw = cosine.shape[-1]
    if params.order == 1:
        xp.maximum(cosine, 0, out=out)
        return
    xp.maximum(cosine, 0, out=first)
    _diagonal(cosine)[...] = 0
    chain = xp.matmul(cosine, _transpose(cosine), out=high)  # C0 is symmetric: C0 C0^T = C0 C0
    if params.order > 2:
        spare = xp.empty_like(chain)
        for _ in range(params.order - 2):
            xp.matmul(chain, cosine, out=spare)
            chain, spare = spare, chain
    chain *= 1.0 / hw ** (params.order - 1)
    _minmax(chain, axis=-1, out=chain)
    xp.maximum(first, chain, out=out)


def structure_affinity(features: Sequence[Array], params: ScgParams, mode: ScgMode = "reference") -> Array:
    """The structure affinity S of each image, summed over feature blocks: (N, HW, HW).

    `features`: one (N, C_b, h, w) array per block (channel counts may differ; N, h, w may not).
    reference: steps 1-7 of docs/reference.md section 4 per block (uses fo_th, so_th, so_weight
    and order). paper: the HSC of Eq. 6-11 per block; it uses order only (fo_th, so_th and
    so_weight have no counterpart in the paper). Compute it once per image and pass it to
    `scg_maps` for any number of classes. float32 (float64 for float64 features).
    """
    if not features:
        raise ValueError("structure_affinity needs at least one feature block")
    if any(f.ndim != 4 for f in features) or len({(f.shape[0], *f.shape[2:]) for f in features}) != 1:
        raise ValueError(f"feature blocks must be (N, C, h, w) with one N, h, w; got {[f.shape for f in features]}")
    if mode not in ("reference", "paper"):
        raise ValueError(f"unknown SCG mode {mode!r}")
    xp = array_namespace(*features)
    n, _, h, w = features[0].shape
    shape, dtype = (n, h * w, h * w), float_dtype(xp, features[0])
    per_block = _reference_block if mode == "reference" else _paper_block
    # (N, HW, HW) buffers are shared by the blocks: three or four per call, not a dozen temporaries.
    total, scratch = xp.empty(shape, dtype), (xp.empty(shape, dtype), xp.empty(shape, dtype))
    per_block(features[0], params, total, *scratch)
    if len(features) > 1:
        block_out = xp.empty(shape, dtype)
        for block in features[1:]:
            per_block(block, params, block_out, *scratch)
            total += block_out
    return total


def scg_maps(affinity: Array, cams: Array, params: ScgParams, mode: ScgMode = "reference") -> Array:
    """SCG maps (N, K, h, w) in [0, 1] from S (N, HW, HW) and cams (N, K, h, w), HW = h * w.

    `cams` are normalised (step 8) and round-tripped (step 9) class maps.
    reference, steps 10-13 before the final resize: pos = cam >= fg_th, neg = cam <= bg_th;
    Sn = S min-max normalised per column; m_pos = min-max of the sum of Sn's pos columns
    (0 when pos is empty), m_neg likewise; m = min-max of relu(m_pos - m_neg).
    paper, Eq. 12-14: M_obj = the mean of the HSC rows i with cam > fg_th (0 when none), M_bg
    likewise with cam < bg_th; m = relu(M_obj - M_bg), min-max normalised (+1e-10) so that
    box thresholds apply as in reference mode.
    """
    xp = array_namespace(affinity, cams)
    n, k, h, w = cams.shape
    if affinity.shape != (n, h * w, h * w):
        raise ValueError(f"affinity {affinity.shape} does not fit cams {cams.shape}")
    dtype = affinity.dtype
    flat = xp.asarray(cams, dtype=dtype).reshape(n, k, h * w)
    if mode == "reference":
        select = xp.concatenate([flat >= params.fg_th, flat <= params.bg_th], axis=1).astype(dtype)
        # summed[n, c, i] = sum over selected j of Sn[n, i, j]: every class, pos and neg, in one product.
        summed = xp.matmul(select, _transpose(_minmax(affinity, axis=-2)))
        _minmax(summed, axis=-1, out=summed)  # an empty selection sums to 0 and stays 0
    elif mode == "paper":
        select = xp.concatenate([flat > params.fg_th, flat < params.bg_th], axis=1).astype(dtype)
        summed = xp.matmul(select, affinity)
        summed /= xp.maximum(select.sum(axis=-1, keepdims=True), 1)
    else:
        raise ValueError(f"unknown SCG mode {mode!r}")
    diff = xp.maximum(summed[:, :k] - summed[:, k:], 0)
    return _minmax(diff, axis=-1, out=diff).reshape(n, k, h, w)
