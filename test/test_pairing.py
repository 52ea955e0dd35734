"""Pairing detections with images by stamp (ros/pairing.py), alone: hand-made stamps and arrival times, no ROS."""
from dataclasses import dataclass

from ar_ros.ros.pairing import MAX_WAITING, Pairing, Settings
from ar_ros.ros.stamp_cache import StampCache

MS = 1_000_000  # ns


@dataclass
class Img:
    name: str
    received: float
    paired: bool = False


def make(capacity=30):
    cache = StampCache(capacity)
    return cache, Pairing(cache)


def add_image(cache, pairing, stamp, t, settings=Settings()):
    img = Img(f"img{stamp}", t)
    cache.put(stamp, img)
    return img, pairing.image(stamp, img, settings)


def counters(out):
    return [e.counter for e in out.events]


def test_exact_stamp_pairs_at_once_and_a_late_image_is_waited_for():
    cache, p = make()
    img, out = add_image(cache, p, 100 * MS, 1.0)
    assert out.jobs == [] and out.due is None
    out = p.detections(100 * MS, "dets", 1.01, Settings())
    assert [(j.image.name, j.detections) for j in out.jobs] == [("img100000000", "dets")]
    assert counters(out) == ["paired_exact"] and img.paired
    # detections first: they wait sync_wait for their image, with the deadline to come back at
    out = p.detections(200 * MS, "later", 2.0, Settings(sync_wait=0.1))
    assert out.jobs == [] and abs(out.due - 0.1) < 1e-9
    img2, out = add_image(cache, p, 200 * MS, 2.05)
    assert [j.detections for j in out.jobs] == ["later"] and counters(out) == ["paired_waited"]


def test_after_sync_wait_the_nearest_unused_image_within_slop_else_unmatched_or_stale():
    cache, p = make()
    s = Settings(sync_wait=0.1, sync_slop_ns=20 * MS, max_image_age_ns=1000 * MS)
    add_image(cache, p, 1000 * MS, 1.0, s)
    assert p.detections(1010 * MS, "near", 1.0, s).jobs == []      # waits for its exact image first
    out = p.pair(1.2, s)                                           # wait over: the nearest within 20 ms
    assert [j.detections for j in out.jobs] == ["near"] and counters(out) == ["paired_nearest"]
    p.detections(1015 * MS, "again", 1.3, s)
    out = p.pair(1.5, s)  # that image went out already: the nearest fallback never reuses it
    assert out.jobs == [] and counters(out) == ["unmatched"] and out.events[0].warning == "unmatched"
    add_image(cache, p, 5000 * MS, 2.0, s)
    p.detections(1500 * MS, "old", 2.0, s)
    out = p.pair(2.5, s)
    assert out.jobs == [] and counters(out) == ["stale"]


def test_of_several_matches_the_newest_frame_wins():
    cache, p = make()
    s = Settings(sync_wait=0.1)
    p.detections(1 * MS, "a", 0.0, s)
    p.detections(2 * MS, "b", 0.0, s)
    cache.put(1 * MS, Img("img1", 0.005))
    cache.put(2 * MS, Img("img2", 0.01))
    out = p.pair(0.02, s)
    assert [j.detections for j in out.jobs] == ["b"] and counters(out).count("skipped_stale") == 1


def test_track_mode_sends_a_frame_alone_when_detections_went_silent():
    cache, p = make()
    s = Settings(track=True, detections_timeout=0.5, sync_wait=0.01, sync_slop_ns=0)
    img, out = add_image(cache, p, 1 * MS, 0.0, s)   # no detections ever: at once, with the previous boxes
    assert [(j.image.name, j.detections) for j in out.jobs] == [("img1000000", None)]
    assert counters(out) == ["no_detections"]
    p.detections(2 * MS, "d", 1.0, s)                 # detections flow (of a frame never received) ...
    img3, out = add_image(cache, p, 3 * MS, 1.1, s)    # ... so a new frame waits for its own
    assert out.jobs == [] and abs(out.due - 0.4) < 1e-9 and counters(out) == ["unmatched"]
    out = p.pair(1.6, s)                              # silent for detections_timeout: the frame goes alone
    assert [(j.image.name, j.detections) for j in out.jobs] == [("img3000000", None)]
    out = p.detections(3 * MS, "late", 1.7, s)        # its detections come after: dropped as late
    assert out.jobs == [] and [e.warning for e in out.events] == ["late"]


def test_waiting_detections_are_bounded_and_reset_forgets_them():
    cache, p = make()
    s = Settings(sync_wait=10.0)
    outs = [p.detections(i * MS, i, 0.0, s) for i in range(MAX_WAITING + 2)]
    assert len(p.waiting) == MAX_WAITING and sum(counters(o).count("unsynced") for o in outs) == 2
    p.reset()
    assert p.waiting == [] and p.unpaired is None and p.pair(0.0, s).due is None
