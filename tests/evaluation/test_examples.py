"""The example grid's captions stay inside their panels."""

from __future__ import annotations

import numpy as np
import pytest
from spa_service.offline.evaluation.examples import (
    CAPTION_HEIGHT,
    MIN_FONT_SCALE,
    captioned,
    fit_caption,
    text_width,
)


@pytest.mark.parametrize("width", [60, 120, 160, 213])
@pytest.mark.parametrize("text", ["CAM t=0.15", "002.Yellow_Checked_Cap_With_A_Long_Name (top-1 wrong)", "x" * 80])
def test_caption_fits_its_panel(text: str, width: int) -> None:
    fitted, scale = fit_caption(text, width)
    assert text_width(fitted, scale) <= width - 6
    assert scale >= MIN_FONT_SCALE
    assert fitted == text or fitted.endswith("..")


def test_captioned_draws_in_its_band_only() -> None:
    picture = np.zeros((50, 80, 3), dtype=np.uint8)
    out = captioned(picture, ["a long caption that would not fit in eighty pixels", "second line"])
    assert out.shape == (CAPTION_HEIGHT + 50, 80, 3)
    assert (out[CAPTION_HEIGHT:] == 0).all()  # the picture untouched
    band = out[:CAPTION_HEIGHT]
    assert (band < 128).any() and (band[:, -3:] == 255).all()  # text, and a clear right margin
