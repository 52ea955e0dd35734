"""Ground truth by background subtraction (``data.real_gt``) on small synthetic videos with known motion,
and the real suite's CLI when the real data was not fetched (CI has none and never downloads it)."""
import numpy as np
import pytest

from ar_ros.data import real_data, real_gt
from ar_ros.eval import real_suite


def _video(objects, n=80, size=(200, 150), seed=0):
    """Static textured background, sensor noise, and opaque rectangles moving on known integer paths.

    ``objects``: list of (colour, (w, h), path(t) -> (x, y)). Returns (frames(), truth[obj][t] = x,y,w,h).
    """
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(90, 200, (h // 10 + 1, w // 10 + 1, 3)).astype(np.float32)
    import cv2
    background = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    truth = [[(float(p(t)[0]), float(p(t)[1]), float(s[0]), float(s[1])) for t in range(n)] for _, s, p in objects]
    noise = [rng.normal(0, 2.0, (h, w, 3)).astype(np.float32) for _ in range(n)]

    def frames():
        for t in range(n):
            img = background.copy()
            for k, (colour, (ow, oh), _) in enumerate(objects):
                x, y = (int(v) for v in truth[k][t][:2])
                img[y:y + oh, x:x + ow] = colour
            yield np.clip(img + noise[t], 0, 255).astype(np.uint8)
    return frames, truth


def _iou(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0.0, min(ax2, bx2) - max(a[0], b[0])), max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3] + b[2] * b[3] - iw * ih)


def test_one_walker_is_found_to_a_pixel():
    frames, truth = _video([((30, 30, 60), (14, 36), lambda t: (12 + 2 * t, 50 + t // 2))])
    gt = real_gt.generate(frames)
    assert gt["frames"] == 80 and gt["size"] == [200, 150]
    (seq,) = gt["sequences"]
    present = [(seq["start"] + i, b) for i, b in enumerate(seq["boxes"]) if b is not None]
    # MOG2 learns the first frames' foreground as background, so the first ~10 frames disagree and are absent
    assert len(present) >= 65
    errors = np.array([np.abs(np.array(b) - truth[0][t]).max() for t, b in present])
    # the GT box is the mean of two boxes that agree to agree_px: at most half that off, mostly exact
    assert errors.max() <= real_gt.GTConfig().agree_px / 2 and np.mean(errors <= 0.5) >= 0.9, errors
    assert gt["stats"]["disagreement_px"]["worst_side_p95"] <= real_gt.GTConfig().agree_px


def test_crossing_walkers_never_swap_or_merge():
    # two people walking towards each other on the same line: they meet around frame 40
    frames, truth = _video([((30, 30, 60), (14, 36), lambda t: (10 + 2 * t, 50)),
                            ((60, 20, 20), (14, 36), lambda t: (176 - 2 * t, 52))])
    cfg = real_gt.GTConfig(min_frames=20)
    gt = real_gt.generate(frames, cfg)
    assert len(gt["sequences"]) >= 2
    for seq in gt["sequences"]:
        boxes = [(seq["start"] + i, b) for i, b in enumerate(seq["boxes"]) if b is not None]
        # the sequence follows one person throughout, and its box never takes in the other one
        owner = int(np.argmax([_iou(boxes[0][1], truth[k][boxes[0][0]]) for k in range(2)]))
        for t, b in boxes:
            assert _iou(b, truth[owner][t]) > 0.8
            assert _iou(b, truth[1 - owner][t]) == 0.0
            mine, other = truth[owner][t][0], truth[1 - owner][t][0]
            assert abs(mine - other) - 14 >= cfg.margin - 2  # never GT while the two are within the margin


def test_a_still_scene_has_no_ground_truth():
    frames, _ = _video([], n=30)
    gt = real_gt.generate(frames)
    assert gt["sequences"] == [] and gt["stats"]["trusted_frames"] == 0


def test_eval_real_skips_without_the_data(tmp_path, monkeypatch, capsys):
    from ar_ros.cli import EXIT_SKIPPED, main
    monkeypatch.setenv("AR_ROS_DATA", str(tmp_path / "none"))
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--suite", "real", "--base", "csrt"])
    err = capsys.readouterr().err
    assert exc.value.code == EXIT_SKIPPED == 77, err
    assert "skipped" in err and "ar-refine data fetch" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(real_data.RealDataMissing):
        real_suite.real_suite(tmp_path / "none")


def test_committed_ground_truth_is_well_formed():
    gt = real_suite.load_gt()
    assert gt["use"] == "evaluation only" and len(gt["video_sha256"]) == 64
    assert gt["stats"]["sequences"] == len(gt["sequences"]) >= 1
    width, height = gt["size"]
    for s in gt["sequences"]:
        present = [b for b in s["boxes"] if b is not None]
        assert s["boxes"][0] is not None and len(present) == s["trusted"] >= gt["config"]["min_frames"]
        assert all(0 <= x and 0 <= y and x + w <= width and y + h <= height and w > 0 and h > 0
                   for x, y, w, h in present)


def test_real_sequences_work_like_synthetic_ones(tmp_path, small_net):
    """A stand-in vtest.avi (a walker, MJPG) and GT file: frames, absent rows and every base tracker."""
    import cv2
    import json
    from ar_ros import Refiner
    from ar_ros.eval.benchmark import run_suite
    frames, truth = _video([((30, 30, 60), (14, 36), lambda t: (12 + 3 * t, 40))], n=8, size=(160, 120))
    video = tmp_path / "eval" / "vtest.avi"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for f in frames():
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    boxes = [list(b) for b in truth[0][2:]]
    boxes[3] = None  # a frame the GT dropped
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"video_sha256": real_data.sha256_file(video), "size": [160, 120],
                                   "sequences": [{"name": "walker", "start": 2, "boxes": boxes}]}))
    (seq,) = real_suite.real_suite(tmp_path, gt_path)
    got = list(seq)
    assert seq.name == "walker" and len(seq) == len(got) == 6 and seq.seed == real_suite.SEED_BASE
    assert got[0].image.shape == (120, 160, 3) and got[0].image.dtype == np.uint8
    assert got[0].box == truth[0][2] and got[3].box == real_suite.ABSENT
    assert np.array_equal(seq[4].image, got[4].image)  # random access decodes the same frame
    refiner = Refiner(small_net)
    for base in ("jitter", "oracle", "csrt"):
        (result,) = run_suite(refiner, [seq], base=base)
        assert result.name == "walker" and (result.gt[3] == 0).all() and result.gt.shape == (6, 4)
        assert np.isnan(result.base_boxes[3]).all() or base == "csrt"  # trackers keep reporting
    gt_path.write_text(gt_path.read_text().replace(real_data.sha256_file(video), "0" * 64))
    with pytest.raises(ValueError, match="not the video"):
        real_suite.real_suite(tmp_path, gt_path)
