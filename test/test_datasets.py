"""Dataset folder readers on tiny folders built in the test, and conversion of one to a bag."""
import cv2
import numpy as np
import pytest

from ar_ros.eval import bags
from ar_ros.eval.datasets import DatasetError, open_dataset


def _frames(folder, n, pattern):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((48, 64, 3), 30 * i, np.uint8)
        cv2.imwrite(str(folder / pattern.format(i)), img)


def test_otb_layout(tmp_path):
    _frames(tmp_path / "Car" / "img", 3, "{0:04d}.jpg")
    (tmp_path / "Car" / "groundtruth_rect.txt").write_text("1,2,10,20\n2\t3\t10\t20\n3 4 10 20\n")
    (seq,) = open_dataset("otb", tmp_path)
    assert seq.name == "Car" and len(seq) == 3 and seq.gt.shape == (3, 4)
    assert seq.image(2).shape == (48, 64, 3) and seq.image(2)[0, 0, 0] == 60


def test_lasot_absent_flags_zero_the_gt(tmp_path):
    seq_dir = tmp_path / "cat" / "cat-1"
    _frames(seq_dir / "img", 3, "{0:08d}.jpg")
    (seq_dir / "groundtruth.txt").write_text("1,2,10,20\n0,0,0,0\n3,4,10,20\n")
    (seq_dir / "full_occlusion.txt").write_text("0,0,1")
    (seq,) = open_dataset("lasot", tmp_path)
    assert seq.name == "cat-1" and seq.gt[2].tolist() == [0, 0, 0, 0] and seq.gt[0].tolist() == [1, 2, 10, 20]


def test_got10k_and_trackingnet_layouts(tmp_path):
    got = tmp_path / "got" / "GOT-10k_Val_000001"
    _frames(got, 2, "{0:08d}.jpg")
    (got / "groundtruth.txt").write_text("1,2,3,4\n")  # test split: first frame only
    (seq,) = open_dataset("got10k", tmp_path / "got")
    assert len(seq) == 2 and seq.gt.shape == (1, 4)
    tn = tmp_path / "tn"
    _frames(tn / "frames" / "abc", 2, "{0}.jpg")
    (tn / "anno").mkdir()
    (tn / "anno" / "abc.txt").write_text("1,2,3,4\n5,6,7,8\n")
    (seq,) = open_dataset("trackingnet", tn)
    assert seq.name == "abc" and seq.gt[1].tolist() == [5, 6, 7, 8]


def test_bad_folders_raise_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        open_dataset("otb", tmp_path / "missing")
    with pytest.raises(DatasetError, match="unknown dataset"):
        open_dataset("vot", tmp_path)
    with pytest.raises(DatasetError, match="no otb sequences"):
        open_dataset("otb", tmp_path)
    bad = tmp_path / "Bad"
    _frames(bad / "img", 1, "{0:04d}.jpg")
    (bad / "groundtruth_rect.txt").write_text("1,2,3,4\n1,2,3,4\n")
    with pytest.raises(DatasetError, match="2 GT rows but only 1 frames"):
        open_dataset("otb", tmp_path)


def test_a_dataset_sequence_with_predictions_becomes_a_bag(tmp_path):
    _frames(tmp_path / "ds" / "Car" / "img", 3, "{0:04d}.jpg")
    (tmp_path / "ds" / "Car" / "groundtruth_rect.txt").write_text("1,2,10,20\n2,3,10,20\n3,4,10,20\n")
    (seq,) = open_dataset("otb", tmp_path / "ds")
    pred = [(1.0, 2.0, 10.0, 20.0), (2.5, 3.0, 11.0, 20.0), (3.0, 4.5, 10.0, 19.0)]
    path = bags.write_sequence(tmp_path / "car.bag", seq.images(), pred, [tuple(r) for r in seq.gt], fps=30)
    reader = bags.open_reader(path)
    try:
        counts = {c.topic: c.msgcount for c in reader.connections}
    finally:
        reader.close()
    assert counts == {bags.IMAGE_TOPIC: 3, bags.BASE_TOPIC: 3, bags.GT_TOPIC: 3}


def _youtube_vos(root, n=3):
    from PIL import Image as PILImage
    for i in range(n):
        (root / "JPEGImages" / "vid1").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / "vid1").mkdir(parents=True, exist_ok=True)
        img = np.full((96, 128, 3), 50, np.uint8)
        labels = np.zeros((96, 128), np.uint8)
        labels[10 + i:40 + i, 20:60] = 1
        labels[50:80, 70 + 2 * i:110 + 2 * i] = 2
        img[labels == 1] = (200, 40, 40)
        img[labels == 2] = (40, 200, 40)
        cv2.imwrite(str(root / "JPEGImages" / "vid1" / f"{5 * i:05d}.jpg"), img)
        pal = PILImage.fromarray(labels, mode="P")
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
        pal.save(root / "Annotations" / "vid1" / f"{5 * i:05d}.png")
    return root


def test_youtube_vos_gives_one_masked_sequence_per_object(tmp_path):
    seqs = open_dataset("youtube_vos", _youtube_vos(tmp_path))
    assert [s.name for s in seqs] == ["vid1_1", "vid1_2"]
    obj1 = seqs[0]
    assert len(obj1) == 3 and obj1.gt[1].tolist() == [20, 11, 40, 30]
    mask = obj1.mask(1)
    assert mask.dtype == np.float32 and mask.sum() == 30 * 40


def test_dataset_pairs_feed_the_trainer_sampler(tmp_path):
    from ar_ros.train.sampler import PairSampler, SamplerConfig, dataset_pairs
    seqs = open_dataset("youtube_vos", _youtube_vos(tmp_path))
    sampler = PairSampler(dataset_pairs(seqs, max_gap=2), SamplerConfig(input_size=64))
    batch = sampler.batch(np.random.default_rng(0), 3)
    assert batch["search"].shape == (3, 3, 64, 64) and float(batch["has_mask"].min()) == 1.0
    assert float(batch["mask"].sum()) > 0
