"""Dataset folder readers on tiny folders built in the test, and conversion of one to a bag."""
import cv2
import numpy as np
import pytest

from ar_ros.eval import bags
from ar_ros.data.datasets import DatasetError, open_dataset


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


def _rle_string(runs):
    """COCO's compressed RLE string, written from the format definition (the inverse of the reader)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10 == 0 and x == 0) or (c & 0x10 and x == -1))
            out.append(chr(c + 48 + (0x20 if more else 0)))
            if not more:
                break
    return "".join(out)


def _runs(mask):
    flat = mask.T.reshape(-1)  # column-major
    runs, current, count = [], 0, 0
    for v in flat:
        if v == current:
            count += 1
        else:
            runs.append(count)
            current, count = v, 1
    runs.append(count)
    return runs


def _coco(root):
    import json
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    img = np.full((60, 80, 3), 90, np.uint8)
    cv2.imwrite(str(root / "val2017" / "000001.jpg"), img)
    blob = np.zeros((60, 80), np.uint8)
    blob[20:45, 50:70] = 1
    blob[30:35, 55:60] = 0  # a hole: several runs per column
    anns = [
        {"id": 1, "image_id": 1, "iscrowd": 0, "bbox": [10, 5, 20, 30],
         "segmentation": [[10, 5, 30, 5, 30, 35, 10, 35]]},
        {"id": 2, "image_id": 1, "iscrowd": 0, "bbox": [50, 20, 20, 25],
         "segmentation": {"size": [60, 80], "counts": _rle_string(_runs(blob))}},
        {"id": 3, "image_id": 1, "iscrowd": 0, "bbox": [50, 20, 20, 25],
         "segmentation": {"size": [60, 80], "counts": _runs(blob)}},
        {"id": 4, "image_id": 1, "iscrowd": 1, "bbox": [0, 0, 40, 40], "segmentation": {"size": [60, 80],
                                                                                          "counts": [4800]}},
        {"id": 5, "image_id": 1, "iscrowd": 0, "bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5]]},
    ]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "000001.jpg", "height": 60, "width": 80}], "annotations": anns}))
    return root, blob


def test_coco_instances_become_masked_single_frame_sequences(tmp_path):
    root, blob = _coco(tmp_path / "coco")
    seqs = open_dataset("coco", root)
    assert [s.name for s in seqs] == ["val2017/1", "val2017/2", "val2017/3"]  # no crowd, nothing under 8 px
    poly = seqs[0].mask(0)
    assert poly.dtype == np.float32 and poly[5:36, 10:31].all() and poly.sum() == 31 * 21
    assert np.array_equal(seqs[1].mask(0), blob) and np.array_equal(seqs[2].mask(0), blob)
    assert seqs[1].image(0).shape == (60, 80, 3) and seqs[1].gt.tolist() == [[50, 20, 20, 25]]


def test_rle_strings_decode_large_and_negative_deltas():
    from ar_ros.data.datasets import rle_counts
    runs = [0, 5000, 3, 70000, 1, 2, 900]
    assert rle_counts(_rle_string(runs)) == runs
    with pytest.raises(DatasetError, match="truncated"):
        rle_counts(_rle_string(runs) + "P")  # a continuation bit with nothing after it


def test_coco_pairs_feed_the_sampler_and_bad_files_are_clear(tmp_path):
    from ar_ros.train.sampler import PairSampler, SamplerConfig, dataset_pairs
    root, _ = _coco(tmp_path / "coco")
    sampler = PairSampler(dataset_pairs(open_dataset("coco", root)), SamplerConfig(input_size=64))
    batch = sampler.batch(np.random.default_rng(0), 4)
    assert float(batch["has_mask"].min()) == 1.0 and float(batch["mask"].sum()) > 0
    from ar_ros.data.datasets import coco_mask
    with pytest.raises(DatasetError, match="malformed COCO segmentation"):
        coco_mask([[1, 2, 3, 4, 5, 6, 7]], 10, 10)  # odd number of coordinates
    with pytest.raises(DatasetError, match="malformed COCO segmentation"):
        coco_mask({"size": [10, 10]}, 10, 10)  # RLE without counts
    import json
    bad = {"images": [{"id": 1, "file_name": "000001.jpg"}],  # no height/width
           "annotations": [{"id": 7, "image_id": 1, "iscrowd": 0, "bbox": [1, 1, 20, 20],
                            "segmentation": [[1, 1, 20, 1, 20, 20]]}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match="malformed annotation 7"):
        open_dataset("coco", root)
    (root / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        open_dataset("coco", root)
    with pytest.raises(DatasetError, match="COCO layout"):
        open_dataset("coco", tmp_path)
