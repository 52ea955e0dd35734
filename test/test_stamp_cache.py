"""The bounded stamp-keyed image cache used for synchronisation."""
import pytest

from ar_ros.ros.stamp_cache import StampCache


def test_exact_then_nearest_within_slop_and_bounded():
    cache = StampCache(3)
    for s in (100, 200, 300, 400):
        cache.put(s, f"img{s}")
    assert len(cache) == 3 and cache.evicted == 1
    assert cache.get(100) is None                       # evicted
    assert cache.get(300) == (300, "img300")            # exact
    assert cache.get(310, slop_ns=20) == (300, "img300")
    assert cache.get(350, slop_ns=20) is None           # nothing within slop
    assert cache.get(310) is None                       # no slop, no match
    assert cache.latest() == (400, "img400")
    assert cache.span() == (200, 400)
    cache.resize(1)
    assert cache.span() == (400, 400)
    with pytest.raises(ValueError):
        StampCache(0)


def test_latest_is_the_last_received_and_a_future_stamp_ages_out():
    cache = StampCache(3)
    cache.put(100, "a")
    cache.put(3600 * 10**9, "future")                   # one frame an hour ahead (clock jump)
    cache.put(200, "b")
    assert cache.latest() == (200, "b")                 # latest received, not the largest stamp
    assert cache.get(150, slop_ns=60) == (100, "a")     # nearest, ties go to the first
    assert cache.get(150, slop_ns=60, accept=lambda item: item != "a") == (200, "b")
    assert cache.get(100, accept=lambda item: False) == (100, "a")  # accept filters the nearest only
    cache.put(300, "c")
    cache.put(400, "d")
    assert cache.span() == (200, 400)                   # the future frame was evicted like any other
