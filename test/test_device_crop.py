"""Crops on the device (engine/device_crop.py) against the OpenCV crops of engine/crop.py, on CPU: the same
code runs on a GPU. The tolerance is the module docstring's: 1 level per pixel, < 0.1 level on average."""
import numpy as np
import pytest
import torch

from ar_ros.data.synthetic import Sequence
from ar_ros.engine import crop as cropping
from ar_ros.engine.batch import CropBatcher
from ar_ros.engine.device_crop import DeviceCropper, axis_taps, to_host

MAX_LEVELS, MEAN_LEVELS, SAME_LEVEL = 1, 0.1, 1e-6
TABLE = cropping.normalisation_table()
STEP = TABLE[:, 1] - TABLE[:, 0]  # one level, per channel


def windows(mode, size, frame, count, seed):
    """Windows of 4..300 px boxes enlarged 1.5-5x, anywhere from fully outside to inside the frame."""
    rng = np.random.default_rng(seed)
    h, w = frame.shape[:2]
    out = []
    for _ in range(count):
        bw, bh = rng.uniform(4, 300, 2)
        box = (rng.uniform(-bw, w), rng.uniform(-bh, h), bw, bh)
        out.append(cropping.window_for(box, rng.uniform(1.5, 5.0), size, mode))
    return out


def levels(batch):
    """Normalised (B,3,S,S) crops back to (B,S,S,3) uint8 levels (as floats; the device rounds to levels)."""
    return np.round((batch.float().permute(0, 2, 3, 1).numpy() - TABLE[:, 0]) / STEP)


@pytest.mark.parametrize("mode", ["exact", "clean"])
@pytest.mark.parametrize("size", [128, 256])
def test_device_crops_equal_the_opencv_crops_within_a_level(mode, size):
    torch.set_num_threads(1)
    frame = Sequence(seed=7, length=2)[0].image
    wins = windows(mode, size, frame, 100, seed=size)
    ref = np.stack([cropping.crop(frame, w) for w in wins]).astype(np.float64)
    got = DeviceCropper(torch.device("cpu"))(frame, wins, "rgb")
    assert got.shape == (100, 3, size, size) and got.is_contiguous(memory_format=torch.channels_last)
    diff = np.abs(levels(got) - ref)
    assert diff.max() <= MAX_LEVELS and diff.mean() < MEAN_LEVELS
    # where the level is the same, the normalised value is the lookup table's
    same = levels(got) == ref
    table = np.stack([TABLE[c][ref[..., c].astype(np.int64)] for c in range(3)], axis=-1)
    assert np.abs(got.permute(0, 2, 3, 1).numpy() - table)[same].max() <= SAME_LEVEL


def test_it_is_a_drop_in_for_the_host_batcher_with_bgr_frames_and_fp16():
    frame = np.ascontiguousarray(Sequence(seed=3, length=2)[0].image[..., ::-1])  # a bgr frame
    wins = windows("clean", 128, frame, 6, seed=1)
    host = CropBatcher(torch.device("cpu"), torch.float16, torch.channels_last)(frame, wins, "bgr")
    device = DeviceCropper(torch.device("cpu"), torch.float16)(frame, wins, "bgr")
    assert device.dtype == host.dtype == torch.float16 and device.shape == host.shape
    assert np.abs(levels(device) - levels(host)).max() <= MAX_LEVELS


def test_exact_mode_reads_the_last_column_and_row_as_black():
    frame = np.full((64, 80, 3), 200, np.uint8)
    win = cropping.window_for((60.0, 40.0, 20.0, 24.0), 1.0, 32, "exact")  # reaches the last column/row
    assert win.ix1 + win.ws == 80 and win.iy1 + win.hs == 64
    got = levels(DeviceCropper(torch.device("cpu"))(frame, [win]))[0]
    ref = cropping.crop(frame, win).astype(np.float64)
    assert np.abs(got - ref).max() <= MAX_LEVELS and ref[-1, -1, 0] < 200 and got[-1, -1, 0] < 200


def test_a_tap_outside_the_frame_weighs_nothing():
    first, second, w0, w1 = axis_taps(-3.0, 1.0, 4, "clean", length=10)
    assert list(w0[:2] + w1[:2]) == [0.0, 0.0]  # positions -3 and -2: both taps outside
    assert (first >= 0).all() and (second <= 9).all()  # indices stay readable


def test_to_host_returns_float32_numpy_and_leaves_host_tensors_as_they_are():
    mask = torch.rand(2, 1, 8, 8)
    out = to_host({"boxes": torch.ones(2, 4, dtype=torch.float16), "mask": mask, "x": mask}, ["boxes", "mask"])
    assert set(out) == {"boxes", "mask"}
    assert out["boxes"].dtype == np.float32 and np.array_equal(out["mask"], mask.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_host_brings_gpu_masks_back_in_fp16_precision():
    mask = torch.rand(2, 1, 8, 8, device="cuda")
    out = to_host({"boxes": torch.ones(2, 4, device="cuda"), "mask": mask}, ["boxes", "mask"])
    assert out["mask"].dtype == np.float32 and np.abs(out["mask"] - mask.cpu().numpy()).max() <= 5e-4
