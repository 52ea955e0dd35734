"""Crops and maps back to the frame, in the authors' exact mode and our clean mode."""
import math

import cv2
import numpy as np
import pytest

from ar_ros.engine import crop as C
from ar_ros.engine.boxes import clip_box, iou, iou_rows

H, W, S = 120, 160, 64


def _reference_exact(frame, box, factor=2.0, size=S):
    """The authors' crop, written differently: window from a zero-extended canvas.

    Their right/bottom off-by-one means: when the window reaches the last column (row), that column
    (row) is black in the crop.
    """
    x, y, w, h = box
    ws, hs = math.ceil(factor * w), math.ceil(factor * h)
    x1, y1 = round(x + w / 2 - ws / 2), round(y + h / 2 - hs / 2)
    src = frame.copy()
    if x1 + ws >= W:
        src[:, W - 1] = 0
    if y1 + hs >= H:
        src[H - 1, :] = 0
    pad = 2 * max(ws, hs) + 2
    canvas = np.zeros((H + 2 * pad, W + 2 * pad, 3), np.uint8)
    canvas[pad:pad + H, pad:pad + W] = src
    win = canvas[pad + y1:pad + y1 + hs, pad + x1:pad + x1 + ws]
    return cv2.resize(win, (size, size), interpolation=cv2.INTER_LINEAR)


BOXES = [
    (40.0, 30.0, 20.0, 16.0),      # inside
    (0.0, 0.0, 15.5, 12.3),        # top-left corner
    (140.0, 100.0, 20.0, 20.0),    # touches right and bottom edges
    (150.5, 50.2, 30.0, 10.0),     # partly outside right
    (-10.0, -5.0, 25.0, 30.0),     # partly outside top-left
    (60.5, 110.0, 10.5, 40.0),     # partly outside bottom
    (10.25, 20.75, 7.5, 9.5),      # halves for banker's rounding
    (0.0, 0.0, 160.0, 120.0),      # whole frame
]


@pytest.fixture
def textured():
    rng = np.random.default_rng(3)
    return rng.integers(1, 255, size=(H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("box", BOXES)
def test_exact_crop_matches_authors_rules(textured, box):
    win = C.window_for(box, 2.0, S, "exact")
    assert np.array_equal(C.crop(textured, win), _reference_exact(textured, box))


def test_exact_crop_uses_bankers_rounding():
    win = C.window_for((10.5, 0.0, 1.0, 1.0), 2.0, S, "exact")  # x + w/2 - ws/2 = 10.0
    assert win.ix1 == 10
    win = C.window_for((10.0, 0.0, 3.0, 3.0), 2.0, S, "exact")  # 11.5 - 3 = 8.5 -> 8 (even)
    assert win.ix1 == 8
    win = C.window_for((10.0, 0.0, 5.0, 5.0), 2.0, S, "exact")  # 12.5 - 5 = 7.5 -> 8 (even)
    assert win.ix1 == 8


def test_exact_window_fully_outside_is_black_not_a_crash(textured):
    win = C.window_for((500.0, 500.0, 10.0, 10.0), 2.0, S, "exact")
    assert not C.crop(textured, win).any()


@pytest.mark.parametrize("mode", C.CROP_MODES)
@pytest.mark.parametrize("box", BOXES)
def test_box_round_trip(mode, box):
    win = C.window_for(box, 2.0, S, mode)
    back = win.box_to_frame(win.box_to_crop(box))
    assert np.allclose(back, box, atol=1e-9)


def test_clean_window_is_the_box_enlarged_about_its_centre():
    box = (40.3, 30.7, 21.0, 13.0)
    xyxy = C.window_for(box, 2.0, S, "clean").box_to_crop(box)
    assert np.allclose(xyxy, [S / 4, S / 4, 3 * S / 4, 3 * S / 4])


def test_exact_back_mapping_keeps_the_authors_unrounded_origin():
    box = (10.25, 20.75, 7.5, 9.5)
    win = C.window_for(box, 2.0, S, "exact")
    assert win.x0 == pytest.approx(10.25 - 3.75) and win.sx == pytest.approx(15 / S)
    # the network's corners map as X = x - w/2 + x1 / w_f
    out = win.box_to_frame(np.array([8.0, 4.0, 40.0, 50.0]))
    assert out[0] == pytest.approx(10.25 - 3.75 + 8.0 * 15 / S)
    assert out[2] == pytest.approx(32.0 * 15 / S)


def test_clean_crop_shows_the_target_in_the_central_half():
    frame = np.zeros((H, W, 3), np.uint8)
    frame[40:60, 50:80] = 200
    patch = C.crop(frame, C.window_for((50.0, 40.0, 30.0, 20.0), 2.0, S, "clean"))
    inner = patch[S // 4 + 1:3 * S // 4 - 1, S // 4 + 1:3 * S // 4 - 1]
    assert (inner == 200).all()
    assert (patch[: S // 4 - 1] == 0).all() and (patch[:, 3 * S // 4 + 1:] == 0).all()


@pytest.mark.parametrize("mode", C.CROP_MODES)
@pytest.mark.parametrize("box", BOXES[:7])
def test_mask_paste_puts_the_central_half_back_on_the_box(mode, box):
    prob = np.zeros((S, S), np.float32)
    prob[S // 4:3 * S // 4, S // 4:3 * S // 4] = 1.0
    win = C.window_for(box, 2.0, S, mode)
    mask = C.paste_mask(prob, win, H, W)
    assert mask.shape == (H, W) and mask.dtype == np.float32
    ys, xs = np.nonzero(mask > 0.5)
    visible = clip_box(box, W, H)
    got = (xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    assert iou(got, visible) > 0.75


@pytest.mark.parametrize("mode", C.CROP_MODES)
def test_a_crop_mask_box_lands_where_the_pasted_mask_does(mode):
    # box_mode "fused" maps the mask's crop box with box_to_frame (after mask_offset): it must land on the
    # mask that paste_mask puts in the frame (exact mode: the mask grid starts at the integer window)
    from ar_ros.engine.masks import crop_mask_box
    box = (50.3, 30.6, 27.2, 33.9)
    prob = np.zeros((S, S), np.float32)
    prob[20:44, 18:40] = 1.0
    win = C.window_for(box, 2.0, S, mode)
    x, y, w, h = win.box_to_frame(crop_mask_box(prob) + win.mask_offset())
    ys, xs = np.nonzero(C.paste_mask(prob, win, H, W) > 0.5)
    np.testing.assert_allclose((x, y, x + w, y + h), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), atol=0.75)


def test_normalisation_table_is_bitwise_the_float64_formula():
    table = C.normalisation_table()
    v = np.arange(256)
    for c, (m, s) in enumerate(zip([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])):
        assert np.array_equal(table[c], ((v / 255.0 - m) / s).astype(np.float32))


def test_iou_helpers():
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    m = iou_rows(np.array([[0, 0, 10, 10], [0, 0, 0, 0]]), np.array([[5, 0, 10, 10], [0, 0, 1, 1]]))
    assert m == pytest.approx([50 / 150, 0.0])
