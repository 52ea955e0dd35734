"""The paper's closed loop (refined box back into the base tracker) and the oracle base, on real OpenCV trackers."""
import numpy as np
import pytest

from ar_ros import Refiner
from ar_ros.data.base_trackers import check_loop, oracle, run_opencv
from ar_ros.eval.benchmark import closed_loop_sequence, run_suite
from ar_ros.data.synthetic import Sequence
from ar_ros.data.opencv_trackers import OpenCVTracker


@pytest.fixture(scope="module")
def short_seq():
    seq = Sequence(100_001, 8, (320, 240))
    return seq, list(seq)


def test_closed_loop_restarts_the_tracker_from_each_refined_box(short_seq):
    _, frames = short_seq
    kind = "kcf"
    # the shipped model, feeding back every trusted box (the paper's loop)
    base, refined, _, _, reseeds, failed = closed_loop_sequence(Refiner(reseed_below=1.0), frames, kind)
    open_base = run_opencv((f.image for f in frames), frames[0].box, kind)
    assert len(base) == len(frames) and reseeds > 0 and failed == 0  # in-frame boxes: OpenCV takes them all
    # frame 1 is tracked from the init box in both loops; from frame 2 on, closed loop tracks from refined boxes
    assert np.allclose(base[1], open_base[1])
    assert not np.allclose(np.array(base[2:]), np.array(open_base[2:]))
    checked = 0
    for i in range(2, len(frames)):
        if np.allclose(refined[i - 1], base[i - 1], atol=1e-3):
            continue  # the refiner kept the base box: nothing to feed back
        # the base box of frame i is what a tracker started on frame i-1 from the refined box reports
        fresh = OpenCVTracker(kind)
        fresh.init(frames[i - 1].image, tuple(refined[i - 1]))
        box = fresh.update(frames[i].image)
        assert np.allclose(base[i], box if box is not None else refined[i - 1], atol=1e-6), i
        checked += 1
    assert checked >= 2


def test_a_tracker_whose_box_is_predicted_right_keeps_its_own_state(short_seq):
    # reseed_below: a trusted refined box goes back only where the head predicts the base box off; at 0 nothing
    # does, so the closed loop's base boxes are the open loop's; at the default, fewer re-seeds than at 1
    _, frames = short_seq
    open_base = run_opencv((f.image for f in frames), frames[0].box, "kcf")
    base, _, _, _, reseeds, _ = closed_loop_sequence(Refiner(reseed_below=0.0), frames, "kcf")
    assert reseeds == 0 and np.allclose(np.array(base[1:]), np.array(open_base[1:]))
    counts = [closed_loop_sequence(Refiner(reseed_below=b), frames, "kcf")[4] for b in (0.5, 1.0)]
    assert counts[0] < counts[1], counts


def test_reseed_with_the_trackers_own_box_keeps_its_model(short_seq):
    _, frames = short_seq
    tracker = OpenCVTracker("kcf")
    tracker.init(frames[0].image, frames[0].box)
    box = tracker.update(frames[1].image) or tracker.last
    assert not tracker.reseed(frames[1].image, box) and tracker.reseeds == 0
    moved = (box[0] + 3.0, box[1], box[2], box[3])
    assert tracker.reseed(frames[1].image, moved) and tracker.reseeds == 1 and tracker.last == moved


@pytest.mark.parametrize("kind", ["csrt", "kcf", "mil"])
def test_reseed_with_a_box_over_the_image_edge_cuts_it_to_the_frame(short_seq, kind):
    # a refined box fed back in closed loop may hang over the edge; OpenCV used to assert (make demo, csrt)
    _, frames = short_seq
    height, width = frames[0].image.shape[:2]
    tracker = OpenCVTracker(kind)
    tracker.init(frames[0].image, frames[0].box)
    for box in ((-12.5, 40.0, 60.0, 50.0), (width - 30.0, height - 20.0, 70.0, 45.0), (width + 5.0, 10.0, 20.0, 20.0)):
        assert tracker.reseed(frames[1].image, box)
        tracker.update(frames[2].image)  # tracks on from there (or reports a loss), no exception
    assert tracker.reseeds == 3


def test_a_box_opencv_refuses_leaves_the_tracker_as_it_was():
    # a sliver along the whole frame height at the right edge: a refined box seen in make demo, which CSRT
    # refuses (cv2.error); the tracker goes on from its own state
    frames = list(Sequence(100_001, 4, (640, 480)))
    tracker = OpenCVTracker("csrt")
    tracker.init(frames[0].image, frames[0].box)
    before = tracker.update(frames[1].image)
    assert before is not None
    assert not tracker.reseed(frames[1].image, (633.6, -29.3, 11.4, 516.3))
    assert tracker.failed_reseeds == 1 and tracker.reseeds == 0 and tracker.last == before
    assert tracker.update(frames[2].image) is not None


def test_oracle_base_is_the_ground_truth_and_stateless_bases_refuse_closed_loop(short_seq, small_net):
    seq, frames = short_seq
    (r,) = run_suite(Refiner(small_net), [seq], base="oracle")
    assert np.allclose(r.base_boxes, r.gt)
    assert r.base.auc == pytest.approx(20 / 21)  # IoU 1 passes every success threshold but the last (IoU > 1)
    assert oracle([(1.0, 2.0, 3.0, 4.0), (0.0, 0.0, 0.0, 0.0)]) == [(1.0, 2.0, 3.0, 4.0), None]
    for base in ("jitter", "oracle"):
        with pytest.raises(ValueError, match="closed loop needs an OpenCV tracker"):
            check_loop(base, "closed")
    with pytest.raises(ValueError, match="loop must be one of"):
        check_loop("csrt", "half")


def test_replay_runs_the_base_tracker_on_the_bag_and_closes_the_loop_like_eval(tmp_path, short_seq):
    from ar_ros.eval import bags
    from ar_ros.eval.replay import replay
    _, frames = short_seq
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames), gt, gt, fps=10)
    refiner = Refiner()
    with pytest.raises(ValueError, match="recorded detections are fixed"):
        replay(bag, refiner, loop="closed", progress=False)
    result = replay(bag, refiner, base_tracker="kcf", loop="closed", progress=False)
    base, refined, _, _, reseeds, failed = closed_loop_sequence(refiner, frames, "kcf")
    assert result.reseeds == reseeds > 0 and result.failed_reseeds == failed
    assert np.allclose(result.boxes("base"), np.array(base)) and np.allclose(result.boxes("refined"), refined)
    opened = replay(bag, refiner, base_tracker="kcf", progress=False)  # open loop: the tracker alone
    assert opened.reseeds == 0
    assert np.allclose(opened.boxes("base"), np.array(run_opencv((f.image for f in frames), gt[0], "kcf")))


def test_keep_iou_keeps_a_base_box_the_refined_box_agrees_with(short_seq, shipped_without_head):
    from ar_ros.engine.boxes import iou
    _, frames = short_seq
    f = frames[3]
    plain = Refiner(shipped_without_head, keep_iou=0.0)
    plain.set_target(frames[0].image, frames[0].box, "t")
    raw = plain.refine(f.image, {"t": f.box})["t"]  # the ground truth as base: the model moves it a little
    agreement = iou(raw.box, f.box)
    assert not raw.kept and raw.box != tuple(f.box) and 0.5 < agreement < 0.99
    for keep_iou, kept in ((agreement - 0.02, True), (agreement + 0.01, False)):
        gated = Refiner(shipped_without_head, keep_iou=keep_iou)
        gated.set_target(frames[0].image, frames[0].box, "t")
        res = gated.refine(f.image, {"t": f.box})["t"]
        assert res.kept == kept and not res.fallback and res.raw_box == raw.box
        assert res.box == (tuple(f.box) if kept else raw.box)
    with pytest.raises(ValueError, match="keep_iou"):
        Refiner(keep_iou=1.5)
