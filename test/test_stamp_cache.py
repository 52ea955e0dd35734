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
