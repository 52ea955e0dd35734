"""box_mode "fused": the corner head's box moved towards the mask's box where the two agree."""
import numpy as np
import pytest
import torch

from ar_ros import Refiner
from ar_ros.engine import crop as cropping
from ar_ros.engine.masks import crop_mask_box, fuse_boxes
from ar_ros.data.synthetic import Sequence


@pytest.fixture(scope="module")
def short_seq():
    seq = Sequence(100_001, 8, (320, 240))
    return seq, list(seq)


def test_crop_mask_box_is_the_largest_region_by_pixel_edges():
    prob = np.zeros((64, 64), np.float32)
    prob[10:30, 5:25] = 0.9     # 20 x 20: the largest region
    prob[40:44, 50:54] = 0.8    # 4 x 4: smaller
    assert crop_mask_box(prob).tolist() == [5.0, 10.0, 25.0, 30.0]
    assert crop_mask_box(prob, threshold=0.85).tolist() == [5.0, 10.0, 25.0, 30.0]
    assert crop_mask_box(prob, threshold=0.95) is None
    tiny = np.zeros((64, 64), np.float32)
    tiny[3:6, 3:6] = 1.0        # 9 px^2: below the minimum area
    assert crop_mask_box(tiny) is None



def _whole_crop_box(prob, threshold=0.5, min_area=16.0):
    """The reference: label the whole crop."""
    import cv2
    count, _, stats, _ = cv2.connectedComponentsWithStats((prob > threshold).astype(np.uint8), connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h, area = stats[best]
    return None if area <= min_area else [float(x), float(y), float(x + w), float(y + h)]


def test_crop_mask_box_labels_like_the_whole_crop():
    """It labels only the rectangle around the pixels above threshold: the same boxes as the whole crop."""
    import cv2
    rng = np.random.default_rng(3)
    boxes = 0
    for _ in range(300):
        noise = rng.uniform(0, 1, (128, 128)).astype(np.float32)
        prob = cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.5, 8.0))
        prob = (prob - prob.mean()) * rng.uniform(1, 30) + rng.uniform(0.2, 0.8)  # 0..many regions, anywhere
        got = crop_mask_box(prob)
        assert (None if got is None else got.tolist()) == _whole_crop_box(prob)
        boxes += got is not None
    assert 100 < boxes < 300  # both outcomes were exercised
    assert crop_mask_box(np.zeros((128, 128), np.float32)) is None
    # regions of the same largest area: the one labelling the whole crop finds first, whatever the offsets
    for _ in range(300):
        prob = np.zeros((128, 128), np.float32)
        side = int(rng.integers(5, 12))
        for _ in range(int(rng.integers(2, 5))):
            y, x = rng.integers(0, 128 - side, 2)
            prob[y:y + side, x:x + side] = 0.9
        got = crop_mask_box(prob)
        assert (None if got is None else got.tolist()) == _whole_crop_box(prob)
    tie = np.zeros((128, 128), np.float32)
    tie[1:6, 100:105] = tie[2:7, 10:15] = 0.9  # two 5x5 squares, the top one on an odd row
    assert crop_mask_box(tie).tolist() == _whole_crop_box(tie) == [100.0, 1.0, 105.0, 6.0]

def test_fuse_boxes_moves_towards_an_agreeing_mask_box_only():
    corner = np.array([10.0, 10.0, 50.0, 90.0])
    near = np.array([14.0, 10.0, 50.0, 86.0])   # IoU 0.855
    np.testing.assert_allclose(fuse_boxes(corner, near, min_iou=0.6, weight=0.7), 0.3 * corner + 0.7 * near)
    np.testing.assert_allclose(fuse_boxes(corner, near, min_iou=0.9, weight=0.7), corner)  # disagree
    np.testing.assert_allclose(fuse_boxes(corner, None), corner)                        # no mask region
    far = np.array([60.0, 60.0, 80.0, 80.0])
    np.testing.assert_allclose(fuse_boxes(corner, far, min_iou=0.0, weight=1.0), far)


def _frames(short_seq):
    _, frames = short_seq
    return frames[0], frames[4]


def test_fused_refiner_box_is_the_fusion_of_the_networks_two_outputs(short_seq):
    first, f = _frames(short_seq)
    corner, fused = Refiner(box_mode="corner"), Refiner(box_mode="fused")
    for r in (corner, fused):
        r.set_target(first.image, first.box, "t")
    base = tuple(float(v) for v in f.box)
    c = corner.refine(f.image, {"t": base})["t"]
    got = fused.refine(f.image, {"t": base})["t"]
    assert got.mask is None  # the mask branch ran for the box; the mask is only pasted when asked for
    # the same fusion by hand from the network's outputs on the same crop
    win = cropping.window_for(base, fused.search_factor, fused.input_size, fused.crop_mode)
    with torch.inference_mode():
        out = fused.net.search(fused._crops(f.image, [win], "rgb"), fused._kernels["t"], with_mask=True)
    mask_xyxy = crop_mask_box(out["mask"][0, 0].float().numpy(), fused.mask_threshold)
    assert mask_xyxy is not None  # the shipped model finds the target's mask on this frame
    expect = win.box_to_frame(fuse_boxes(out["boxes"][0].float().numpy(), mask_xyxy))
    np.testing.assert_allclose(got.box, expect, atol=1e-4)
    assert not got.fallback and got.box != c.box
    # weight 0: the corner box exactly; asking for the mask as well changes no box
    fused.fuse_weight = 0.0
    np.testing.assert_allclose(fused.refine(f.image, {"t": base})["t"].box, c.box, atol=1e-4)
    fused.fuse_weight = 0.7
    with_mask = fused.refine(f.image, {"t": base}, mask=True)["t"]
    assert with_mask.mask is not None
    np.testing.assert_allclose(with_mask.box, got.box, atol=1e-4)


def test_box_mode_is_checked():
    with pytest.raises(ValueError, match="box_mode"):
        Refiner(box_mode="mask")


def test_auto_fuses_with_the_slim_mask_decoder_only(short_seq):
    from ar_ros.model import AlphaRefineNet, NetConfig
    first, f = _frames(short_seq)
    base = tuple(float(v) for v in f.box)
    torch.manual_seed(0)
    slim = AlphaRefineNet(NetConfig(input_size=128, with_top=False, crop_mode="clean", mask_head="slim")).eval()
    authors = AlphaRefineNet(NetConfig(input_size=128, with_top=False, crop_mode="clean")).eval()
    for net, means in ((slim, "fused"), (authors, "corner")):
        auto = Refiner(net)
        assert auto.box_mode == "auto" and auto.resolved_box_mode() == means
        assert Refiner(net, box_mode="corner").resolved_box_mode() == "corner"
        same = Refiner(net, box_mode=means)
        for r in (auto, same):
            r.set_target(first.image, first.box, "t")
        assert auto.refine(f.image, {"t": base})["t"].box == same.refine(f.image, {"t": base})["t"].box
    assert Refiner().resolved_box_mode() == ("fused" if Refiner().config.mask_head == "slim" else "corner")


@pytest.mark.parametrize("threshold", [0.5, 0.3, 1e-4, 1 - 1e-4])
def test_logits_mask_box_is_the_box_of_the_upsampled_probabilities(threshold):
    """The decoder's logits, upsampled here, give the box its probabilities (torch's upsampling) give."""
    import cv2
    import torch.nn.functional as F
    from ar_ros.engine.masks import logits_mask_box
    rng = np.random.default_rng(5)
    for _ in range(50):
        logits = cv2.GaussianBlur(rng.standard_normal((64, 64)).astype(np.float32), (0, 0), rng.uniform(1, 6))
        logits = (logits - logits.mean()) * rng.uniform(10, 200)
        probs = torch.sigmoid(F.interpolate(torch.from_numpy(logits)[None, None], scale_factor=2.0, mode="bilinear",
                                            align_corners=False))[0, 0].numpy()
        want, got = crop_mask_box(probs, threshold), logits_mask_box(logits, 128, threshold)
        assert (want is None) == (got is None)
        if want is not None:
            np.testing.assert_array_equal(got, want)
