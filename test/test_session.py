"""Target bookkeeping shared by node and replay: new ids, timeouts, anonymous boxes, track mode."""
import pytest

from ar_ros import Refiner
from ar_ros.engine.session import RefineSession

BOX = (200.0, 150.0, 120.0, 90.0)


@pytest.fixture
def session(small_net):
    return RefineSession(Refiner(small_net), mode="refine", max_targets=2, target_timeout_ns=100)


def test_new_ids_get_templates_and_time_out(session, frame):
    step = session.step(frame, [("a", BOX), ("b", (10.0, 10.0, 50.0, 40.0))], stamp_ns=0)
    assert list(step.results) == ["a", "b"] and session.targets == ["a", "b"]
    step = session.step(frame, [("a", BOX)], stamp_ns=50)
    assert list(step.results) == ["a"] and session.targets == ["a", "b"]
    step = session.step(frame, [("a", BOX)], stamp_ns=200)
    assert step.forgotten == ["b"] and session.targets == ["a"]


def test_max_targets_invalid_and_duplicate_inputs_are_skipped_with_reasons(session, frame):
    huge = (0.0, 0.0, 2e300, 50.0)  # finite but absurd: not "refined" to 2.2e300
    step = session.step(frame, [("a", BOX), ("n", (float("nan"), 0, 1, 1)), ("a", BOX), ("b", BOX), ("c", BOX),
                                ("h", huge)], 0)
    # invalid boxes, and those over max_targets, come out under their id, base box kept, flagged (the same
    # ids in as out)
    assert list(step.results) == ["a", "n", "b", "c", "h"]
    assert step.results["c"].fallback and step.results["c"].box == BOX and "max_targets" in step.results["c"].reason
    assert step.results["h"].box == huge and step.results["h"].fallback and "times the" in step.results["h"].reason
    assert step.results["n"].fallback and "NaN" in step.results["n"].reason and step.results["n"].score == 0.0
    kinds = {(tid, kind) for tid, kind, _ in step.skipped}
    assert kinds == {("a", "duplicate_id"), ("c", "over_max_targets"), ("n", "invalid_box"), ("h", "invalid_box")}
    assert sorted(session.targets) == ["a", "b"]


def test_anonymous_detections_use_their_own_frame_and_leave_nothing_behind(session, frame):
    step = session.step(frame, [("", BOX), ("", (10.0, 10.0, 50.0, 40.0))], stamp_ns=0)
    assert sorted(step.results) == ["#0", "#1"]
    assert session.targets == [] and session.refiner.targets == []


def test_id_less_boxes_count_against_max_targets(session, frame):
    # one message with 1000 id-less boxes: max_targets (2) templates and crops, the rest flagged, in input order
    boxes = [("", (float(x), 100.0, 40.0, 30.0)) for x in range(0, 500, 5)] * 10
    passes = session.refiner.passes
    step = session.step(frame, [("a", BOX)] + boxes, stamp_ns=0)
    assert len(step.results) == 1001 and list(step.results)[:3] == ["a", "#1", "#2"]
    refined = [tid for tid, res in step.results.items() if "max_targets" not in res.reason]
    assert refined == ["a", "#1"] and session.refiner.last_batch_size == 2 and session.refiner.passes == passes + 1
    assert all(res.fallback and res.box == res.base_box for tid, res in step.results.items() if tid not in refined)
    assert sum(kind == "over_max_targets" for _, kind, _ in step.skipped) == 999
    assert session.targets == ["a"] and session.refiner.targets == ["a"]


def test_track_mode_uses_matching_ids_then_overlap_then_last_box(small_net, frame):
    s = RefineSession(Refiner(small_net), mode="track", max_targets=3)
    first = s.add_targets(frame, {"x": BOX}, stamp_ns=0)
    assert "x" in first and s.targets == ["x"]
    step = s.step(frame, [("other", (0.0, 0.0, 30.0, 30.0))], stamp_ns=1)
    assert list(step.results) == ["x"] and step.results["x"].base_box == first["x"].box  # last box
    step = s.step(frame, [("", (205.0, 150.0, 120.0, 90.0))], stamp_ns=2)
    assert step.results["x"].base_box == (205.0, 150.0, 120.0, 90.0)                   # best overlap
    step = s.step(frame, [("x", (190.0, 150.0, 120.0, 90.0))], stamp_ns=3)
    assert step.results["x"].base_box == (190.0, 150.0, 120.0, 90.0)                   # same id
    last = step.results["x"].box
    step = s.step(frame, [("x", (0.0, 0.0, 2e300, 50.0))], stamp_ns=4)                  # absurd: not a base box
    assert step.results["x"].base_box == last
    with pytest.raises(ValueError, match="max_targets"):
        s.add_targets(frame, {"p": BOX, "q": BOX, "r": BOX})
    assert s.clear(["x", "ghost"]) == ["ghost"] and s.targets == []


def test_namespaced_sessions_share_one_refiner_and_batch_across_frames(small_net, frame):
    refiner = Refiner(small_net)
    front = RefineSession(refiner, namespace="front")
    left = RefineSession(refiner, namespace="left")
    plans = [(front, front.plan(frame, [("a", BOX)], 0)), (left, left.plan(frame[::-1].copy(), [("a", BOX)], 0))]
    assert sorted(refiner.targets) == [("front", "a"), ("left", "a")]
    passes = refiner.passes
    outputs = refiner.refine_many([(frame, plans[0][1].bases), (frame[::-1].copy(), plans[1][1].bases)])
    assert refiner.passes == passes + 1 and refiner.last_batch_size == 2
    steps = [s.finish(p, out) for (s, p), out in zip(plans, outputs)]
    assert list(steps[0].results) == ["a"] and list(steps[1].results) == ["a"]
    assert front.targets == ["a"] and left.targets == ["a"]
    front.clear()
    assert refiner.targets == [("left", "a")] and left.targets == ["a"]
