"""Synthetic data, rosbag2 files, offline replay and the suite benchmark, end to end on tiny inputs."""
import os

import numpy as np
import pytest

from ar_ros import Refiner
from ar_ros.eval import bags
from ar_ros.data.base_trackers import jittered_gt, run_opencv
from ar_ros.eval.replay import replay
from ar_ros.data.synthetic import Sequence, mask_box, suite


@pytest.fixture(scope="module")
def tiny_seq():
    seq = Sequence(100_000, 30, (320, 240))
    return seq, list(seq)


def test_sequences_are_deterministic_and_boxes_match_masks(tiny_seq):
    seq, frames = tiny_seq
    again = Sequence(100_000, 30, (320, 240))[5]
    assert np.array_equal(again.image, frames[5].image) and again.box == frames[5].box
    for f in frames:
        assert f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8
        assert f.box == mask_box(f.mask)
    assert not np.array_equal(Sequence(100_001, 30, (320, 240))[0].image, frames[0].image)
    with pytest.raises(IndexError):
        seq[30]
    assert len(suite("tiny")) == 2


def test_base_trackers(tiny_seq):
    _, frames = tiny_seq
    gt = [f.box for f in frames]
    jit = jittered_gt(gt, seed=1)
    assert jit[0] == gt[0] and jit[3] != gt[3]
    csrt = run_opencv((f.image for f in frames), gt[0], "csrt")
    assert len(csrt) == len(frames) and all(b is not None for b in csrt)


@pytest.mark.parametrize("storage, compressed", [("sqlite3", False), ("mcap", True)])
def test_bag_round_trip_and_replay_writes_refined_topic(tmp_path, tiny_seq, small_net, storage, compressed):
    _, frames = tiny_seq
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames), jittered_gt(gt, 1), gt, fps=10,
                              storage=storage, compressed=compressed)
    result = replay(bag, Refiner(small_net), out=tmp_path / "out", progress=False, video=tmp_path / "v.mp4")
    assert (result.frames, result.refined_frames, result.unpaired, result.bad_images) == (30, 30, 0, 0)
    assert result.boxes("refined").shape == (30, 4) and not np.isnan(result.boxes("refined")).any()
    assert np.allclose(np.stack(result.gt), np.array(gt))
    assert set(result.scores()) == {"base", "refined"}
    assert os.path.getsize(tmp_path / "v.mp4") > 0
    reader = bags.open_reader(tmp_path / "out")
    try:
        counts = {c.topic: c.msgcount for c in reader.connections}
        store = bags.typestore()
        first = next(m for c, _, _, m in bags.messages(reader, store, [bags.REFINED_TOPIC]))
    finally:
        reader.close()
    image_topic = bags.COMPRESSED_TOPIC if compressed else bags.IMAGE_TOPIC
    assert counts == {image_topic: 30, bags.BASE_TOPIC: 30, bags.GT_TOPIC: 30, bags.REFINED_TOPIC: 30}
    assert first.detections[0].id == "target" and first.header.frame_id == "camera"


def test_interrupted_replay_leaves_no_bag_under_the_final_name(tmp_path, tiny_seq, small_net):
    _, frames = tiny_seq
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames), gt, gt, fps=10)

    class Exploding(Refiner):
        calls = 0

        def refine(self, *a, **k):
            Exploding.calls += 1
            if Exploding.calls == 5:
                raise KeyboardInterrupt
            return super().refine(*a, **k)

    with pytest.raises(KeyboardInterrupt):
        replay(bag, Exploding(small_net), out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_bad_bags_give_clear_errors(tmp_path, small_net):
    with pytest.raises(bags.BagError, match="not found"):
        replay(tmp_path / "missing", Refiner(small_net), progress=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 99}\n")
    with pytest.raises(bags.BagError, match="broken"):
        replay(tmp_path / "broken", Refiner(small_net), progress=False)
    with pytest.raises(bags.BagError, match="exists"):
        (tmp_path / "exists").mkdir()
        with bags.atomic_bag(tmp_path / "exists"):
            pass


def test_replay_of_a_cut_off_recording_refines_every_intact_frame(tmp_path, small_net):
    from test_bags import _cut_off_recording
    bag, boxes, _ = _cut_off_recording(tmp_path)
    result = replay(bag, Refiner(small_net), out=tmp_path / "out", progress=False)
    reader = bags.open_reader(tmp_path / "out")  # a complete bag again (rosbags opens it, no scan)
    try:
        assert type(reader).__name__ == "Reader"
        counts = {c.topic: c.msgcount for c in reader.connections}
    finally:
        reader.close()
    assert 0 < counts[bags.IMAGE_TOPIC] < len(boxes)
    assert result.frames == counts[bags.IMAGE_TOPIC]
    assert result.refined_frames >= counts[bags.IMAGE_TOPIC] - 1  # the last detections may be cut off
    assert counts[bags.REFINED_TOPIC] == result.refined_frames


def test_replay_skips_undecodable_messages_counts_them_and_keeps_them_in_the_output(tmp_path, tiny_seq, small_net):
    _, frames = tiny_seq
    gt = [f.box for f in frames[:6]]
    good = bags.write_sequence(tmp_path / "good", (f.image for f in frames[:6]), gt, gt, fps=10)
    # copy the bag, cutting the 3rd image and the 5th base detections message short
    store = bags.typestore()
    reader = bags.open_reader(good)
    seen = {bags.IMAGE_TOPIC: 0, bags.BASE_TOPIC: 0}
    with bags.atomic_bag(tmp_path / "bad") as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in reader.connections}
        for conn, t, raw in reader.messages():
            if conn.topic in seen:
                seen[conn.topic] += 1
                if (conn.topic, seen[conn.topic]) in ((bags.IMAGE_TOPIC, 3), (bags.BASE_TOPIC, 5)):
                    raw = raw[:30]
            writer.write(conns[conn.id], t, raw)
    reader.close()
    result = replay(tmp_path / "bad", Refiner(small_net), out=tmp_path / "out", progress=False)
    assert (result.frames, result.bad_images, result.bad_messages) == (6, 1, 1)
    assert result.refined_frames == 4  # the cut image, and the image whose detections were cut
    out = bags.open_reader(tmp_path / "out")
    try:
        counts = {c.topic: c.msgcount for c in out.connections}
    finally:
        out.close()
    assert counts[bags.IMAGE_TOPIC] == 6 and counts[bags.BASE_TOPIC] == 6 and counts[bags.REFINED_TOPIC] == 4


def test_replay_without_the_detections_topic_names_the_topics(tmp_path, tiny_seq, small_net):
    _, frames = tiny_seq
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames[:3]), gt[:3], None, fps=10)
    with pytest.raises(bags.BagError, match="/camera/image"):
        replay(bag, Refiner(small_net), detections_topic="/nope", progress=False)


def _cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "ar_ros", *args], capture_output=True, text=True, timeout=600)


def test_cli_errors_are_one_line_and_exit_2(tmp_path, tiny_seq):
    proc = _cli("replay", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "bag not found" in proc.stderr and "Traceback" not in proc.stderr
    _, frames = tiny_seq
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames[:3]), [f.box for f in frames[:3]], None)
    proc = _cli("replay", str(bag), "--detections-topic", "/other")
    assert proc.returncode == 2 and "no detections topic /other" in proc.stderr
    proc = _cli("replay", str(bag), "--out", str(bag))
    assert proc.returncode == 2 and "exists" in proc.stderr


def test_cli_replay_and_eval_json(tmp_path, tiny_seq):
    import json
    _, frames = tiny_seq
    gt = [f.box for f in frames]
    bag = bags.write_sequence(tmp_path / "in", (f.image for f in frames), jittered_gt(gt, 3), gt, fps=10)
    proc = _cli("replay", str(bag), "--out", str(tmp_path / "out"), "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["refined_frames"] == 30 and set(info["scores"]) == {"base", "refined"}
    proc = _cli("eval", "--suite", "tiny", "--json", "--out", str(tmp_path / "ev"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data["summary"]) == {"base", "refined"} and len(data["sequences"]) == 2
    for name in ("eval_tiny_jitter.json", "auc_tiny_jitter.png", "success_tiny_jitter.png", "contact_tiny_jitter.png"):
        assert (tmp_path / "ev" / name).exists(), name


def test_suite_counts_kept_base_boxes_and_lost_frames_in_their_own_fields():
    from ar_ros import Refiner
    from ar_ros.data.synthetic import Sequence
    from ar_ros.eval.benchmark import run_suite
    keep_all = Refiner(None, keep_iou=1e-9)  # the shipped model; any overlap keeps the base box
    (r,) = run_suite(keep_all, [Sequence(3, 6, (160, 120))], base="oracle")
    assert r.fallbacks == 0 and r.kept == 5  # every frame after the first: kept, counted as kept
    assert r.lost == 0 and r.failed_reseeds == 0 and r.reseeds == 0


def test_distractor_boxes_are_where_the_look_alikes_are_painted():
    """The pixels a sequence's distractors change (the frame against the same frame rendered without them)
    lie inside the boxes distractor_boxes gives (widened by the horizontal motion blur's reach, 9 px), and
    the boxes on the frame hold changed pixels (but where the target or the passing occluder hides one)."""
    boxes = shown = 0
    for seed in (95000, 95005, 95007, 123):
        seq, bare = Sequence(seed), Sequence(seed)
        bare.distractors = []
        for t in (0, 60, 120):
            changed = np.abs(seq[t].image.astype(int) - bare[t].image).max(2) > 0
            inside = np.zeros_like(changed)
            for (x, y, w, h), _ in seq.distractor_boxes(t):
                x1, y1 = max(int(np.floor(x)) - 10, 0), max(int(np.floor(y)) - 1, 0)
                x2, y2 = int(np.ceil(x + w)) + 11, int(np.ceil(y + h)) + 2
                if x2 > 0 and y2 > 0 and x1 < seq.width and y1 < seq.height:
                    boxes += 1
                    shown += int(changed[y1:y2, x1:x2].sum() > 20)
                inside[y1:y2, x1:x2] = True
            assert not (changed & ~inside).any(), (seed, t)
    assert boxes >= 12 and shown >= boxes - 2
    assert [twin for _, twin in Sequence(95005).distractor_boxes(0)] == [True, True]
    assert [twin for _, twin in Sequence(123).distractor_boxes(0)] == [False, False]


def test_on_twin_and_the_pairs_without_twin_frames():
    from ar_ros.eval.benchmark import on_twin
    from ar_ros.eval.calibration import QualityPairs, without_twins
    truth, twin = (0, 0, 10, 10), (50, 50, 10, 10)
    assert on_twin((51, 50, 10, 10), truth, [(twin, True)])
    assert not on_twin((51, 50, 10, 10), truth, [(twin, False)])  # a look-alike with another texture
    assert not on_twin((1, 0, 10, 10), truth, [(twin, True)])
    assert not on_twin((5, 5, 50, 50), truth, [(twin, True)])  # touches both: the twin under 0.3
    pairs = QualityPairs(*(np.array([0.9, 0.8, 0.7]) for _ in range(4)), on_twin=np.array([False, True, False]))
    sets = without_twins("s", QualityPairs.concat([pairs, pairs]))
    assert list(sets) == ["s", "s, 2 frames on a twin left out"]
    assert sets["s, 2 frames on a twin left out"].pred_quality.tolist() == [0.9, 0.7, 0.9, 0.7]
    plain = QualityPairs(*(np.array([0.5]) for _ in range(4)))
    assert QualityPairs.concat([pairs, plain]).on_twin is None and list(without_twins("s", plain)) == ["s"]


def test_csrt_on_a_twin_is_found_by_the_suite_run():
    """Validation sequence 95005: CSRT and the refined box move onto the target's twin, where the quality
    head (rightly, for any single frame) rates the box as good; run_suite marks those frames."""
    from ar_ros.eval.benchmark import run_suite
    refiner = Refiner(precision="fp32")
    (r,) = run_suite(refiner, [Sequence(95005, 100)], base="csrt")
    twin = r.quality.on_twin
    assert twin is not None and twin.sum() >= 50
    assert r.quality.true_quality[twin].mean() < 0.1 and r.quality.pred_quality[twin].mean() > 0.7
    assert r.quality.true_quality[~twin].mean() > 0.5
