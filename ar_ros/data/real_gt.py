"""Ground truth for real static-camera footage, made by classical vision (no labels exist here).

Used on PETS09-S2L1 (``vtest.avi``) for the real-footage suite (``ar_ros.eval.real_suite``). Two
background-subtraction methods run independently on every frame:

* ``median``: a per-pixel temporal median of the whole video as the background; foreground where any
  colour channel differs by more than ``diff_threshold``; opened 3x3, closed with a 7x7 ellipse.
* ``mog2``: OpenCV's adaptive Gaussian mixture (MOG2, shadows detected and dropped), trained by one
  pass over the video and read out in a second pass; median-filtered 5x5, closed 5x5.

Each method's connected components (at least ``min_area`` px) are blobs with a tight box. A blob of
the median method is **trusted** on a frame only if (1) exactly one mog2 blob overlaps it and their
boxes agree to ``agree_px`` on all four sides, (2) no other blob of either method comes within
``margin`` px (isolated: no merge, no split by the lamp post), (3) it keeps ``border`` px from the
image edge, and (4) its height is within ``size_tol`` of the track's median (an occluder cut it).
The GT box is the mean of the two methods' boxes. Blobs are linked into tracks by IoU; a track ends
when its person comes near another blob, touches another track's blob, or its blob's area jumps by
``merge_area`` (merged with someone never tracked), so two people crossing can never swap identity or
share a box; and when it is lost for more than ``max_gap`` frames. A track with at least
``min_frames`` trusted frames is a sequence; untrusted frames inside it are absent (all-zero rows,
not scored).

Precision: the two methods' disagreement on trusted frames is recorded (``stats``); with independent
errors of equal size the mean box is off by about disagreement / 2 per side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..progress import progress_bar

Box = Tuple[float, float, float, float]


@dataclass(frozen=True)
class GTConfig:
    """Every threshold of the generator, in one place (recorded in the GT file)."""

    diff_threshold: int = 30     # median method: colour difference (0..255) that counts as foreground
    background_step: int = 3     # median method: every n-th frame goes into the median
    mog2_history: int = 300
    mog2_var_threshold: float = 24.0
    min_area: int = 150          # px: smaller blobs are noise
    agree_px: float = 4.0        # the two methods' boxes must agree this well on each side
    margin: int = 8              # px around a box that must be free of other (big) blobs
    border: int = 3              # px from the image edge (a person cut by the edge is not whole)
    size_tol: float = 0.15       # relative height change vs the track median that marks an occlusion
    min_iou_link: float = 0.3    # IoU linking a blob to a track's last box
    max_gap: int = 8             # frames a track may go without a trusted blob
    min_frames: int = 60         # trusted frames for a sequence
    neighbour_area: float = 0.2  # blobs smaller than this fraction of a box's area are not neighbours
    merge_area: float = 1.8      # a track's blob growing (or shrinking) this much at once merged (split)


def _blobs(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Boxes (N,4) x1,y1,x2,y2 (exclusive) of the connected components of ``mask`` with area >= min_area."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[1:, cv2.CC_STAT_AREA] >= min_area
    s = stats[1:][keep]
    return np.stack([s[:, 0], s[:, 1], s[:, 0] + s[:, 2], s[:, 1] + s[:, 3]], 1).astype(np.float64) \
        if len(s) else np.zeros((0, 4))


def median_background(frames: Iterable[np.ndarray], step: int) -> np.ndarray:
    """Per-pixel temporal median of every ``step``-th frame (HxWx3 uint8)."""
    picked = [f for i, f in enumerate(frames) if i % step == 0]
    if not picked:
        raise ValueError("no frames")
    return np.median(np.stack(picked), axis=0).astype(np.uint8)


def median_masks(frames: Iterable[np.ndarray], background: np.ndarray, cfg: GTConfig) -> Iterator[np.ndarray]:
    bg = background.astype(np.int16)
    opening = np.ones((3, 3), np.uint8)
    closing = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for f in frames:
        fg = (np.abs(f.astype(np.int16) - bg).max(axis=2) > cfg.diff_threshold).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, opening)
        yield cv2.morphologyEx(fg, cv2.MORPH_CLOSE, closing)


def mog2_masks(frames: Callable[[], Iterable[np.ndarray]], cfg: GTConfig) -> Iterator[np.ndarray]:
    """MOG2 foreground (shadows dropped): learn over one pass of ``frames()``, report on a second."""
    mog = cv2.createBackgroundSubtractorMOG2(history=cfg.mog2_history, varThreshold=cfg.mog2_var_threshold,
                                             detectShadows=True)
    for f in frames():
        mog.apply(f)
    closing = np.ones((5, 5), np.uint8)
    for f in frames():
        fg = (mog.apply(f, learningRate=0) == 255).astype(np.uint8)
        fg = cv2.medianBlur(fg, 5)
        yield cv2.morphologyEx(fg, cv2.MORPH_CLOSE, closing)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box ``a`` with rows ``b``."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)


def _near(a: np.ndarray, b: np.ndarray, margin: float) -> np.ndarray:
    """Rows of ``b`` that come within ``margin`` px of box ``a``."""
    return ((b[:, 0] < a[2] + margin) & (b[:, 2] > a[0] - margin) &
            (b[:, 1] < a[3] + margin) & (b[:, 3] > a[1] - margin))


@dataclass
class FrameBlobs:
    """One frame's blobs of the median method and, for each, why it is (not) trusted."""

    boxes: np.ndarray            # (N,4) mean of both methods where they match, else the median method's box
    isolated: np.ndarray         # (N,) bool: no other blob within the margin
    reason: List[str]            # "" (trusted so far) | "disagree" | "near" | "border"
    disagreement: np.ndarray     # (N,4) |side difference| to the matching mog2 blob (inf when none)


def classify(a: np.ndarray, b: np.ndarray, width: int, height: int, cfg: GTConfig) -> FrameBlobs:
    """Match the median method's blobs ``a`` to the mog2 blobs ``b`` of one frame and check each."""
    boxes, isolated, reasons, dis = a.copy(), np.zeros(len(a), bool), [], np.full((len(a), 4), np.inf)
    area_a, area_b = _area(a), _area(b)
    for i, box in enumerate(a):
        # blobs much smaller than this one (flapping tape, litter) cannot hide a person: they do not count
        # as neighbours, but one that merges into the box changes its size (caught by the size check)
        big = cfg.neighbour_area * _area(box[None])[0]
        others_a = np.delete(a, i, axis=0)[np.delete(area_a, i) >= big]
        overlapping = np.nonzero(_iou(box, b) > 0.0)[0] if len(b) else np.zeros(0, int)
        near_b = np.nonzero(_near(box, b, cfg.margin) & ((area_b >= big) | (_iou(box, b) > 0)))[0] \
            if len(b) else np.zeros(0, int)
        iso = not _near(box, others_a, cfg.margin).any() and len(near_b) <= 1
        isolated[i] = iso
        reason = ""
        if len(overlapping) == 1:
            match = b[overlapping[0]]
            dis[i] = np.abs(match - box)
            if dis[i].max() <= cfg.agree_px:
                boxes[i] = (box + match) / 2
        if not iso:
            reason = "near"
        elif dis[i].max() > cfg.agree_px:
            reason = "disagree"
        elif (box[0] < cfg.border or box[1] < cfg.border or box[2] > width - cfg.border
              or box[3] > height - cfg.border):
            reason = "border"
        reasons.append(reason)
    return FrameBlobs(boxes, isolated, reasons, dis)


@dataclass
class Track:
    start: int
    boxes: Dict[int, np.ndarray]       # frame -> x1y1x2y2 (every linked frame)
    reasons: Dict[int, str]            # frame -> "" trusted | why not
    disagreement: Dict[int, np.ndarray]
    last: int


def link(per_frame: Sequence[FrameBlobs], cfg: GTConfig) -> List[Track]:
    """Tracks of isolated blobs. A track ends when its blob comes near another one, touches another
    track's blob (a merge), suddenly changes area by ``merge_area`` (it merged with someone never
    tracked), or is lost for more than ``max_gap`` frames: identities can never swap."""
    done: List[Track] = []
    active: List[Track] = []
    for t, fb in enumerate(per_frame):
        n = len(fb.boxes)
        touching = {j: [tr for tr in active if _iou(tr.boxes[tr.last], fb.boxes[j:j + 1])[0] > 0] for j in range(n)}
        merged = {id(tr) for trs in touching.values() if len(trs) > 1 for tr in trs}
        taken: Dict[int, int] = {}   # blob index -> id of the track it went to
        ended = set(merged)
        for tr in sorted(active, key=lambda tr: tr.start):
            if id(tr) in ended or not n:
                continue
            ious = _iou(tr.boxes[tr.last], fb.boxes)
            ious[list(taken)] = 0.0
            j = int(np.argmax(ious))
            if ious[j] < cfg.min_iou_link:
                continue
            taken[j] = id(tr)
            recent = np.median(_area(np.array([tr.boxes[u] for u in sorted(tr.boxes)[-5:]])))
            ratio = _area(fb.boxes[j:j + 1])[0] / max(recent, 1.0)
            if not fb.isolated[j] or not 1 / cfg.merge_area < ratio < cfg.merge_area:
                ended.add(id(tr))
                continue
            tr.boxes[t], tr.reasons[t], tr.disagreement[t], tr.last = fb.boxes[j], fb.reason[j], \
                fb.disagreement[j], t
        still: List[Track] = []
        for tr in active:
            (done if id(tr) in ended or t - tr.last > cfg.max_gap else still).append(tr)
        active = still
        for j in range(n):
            if j not in taken and fb.isolated[j] and not touching[j]:
                active.append(Track(t, {t: fb.boxes[j]}, {t: fb.reason[j]}, {t: fb.disagreement[j]}, t))
    return done + active


def _size_check(tr: Track, cfg: GTConfig) -> None:
    """Mark frames whose height departs from the track's median height (partly hidden) as untrusted."""
    trusted = [t for t, r in tr.reasons.items() if r == ""]
    if not trusted:
        return
    heights = np.array([tr.boxes[t][3] - tr.boxes[t][1] for t in trusted])
    for t, h in zip(trusted, heights):
        window = heights[[abs(u - t) <= 15 for u in trusted]]
        if abs(h - np.median(window)) > cfg.size_tol * np.median(window):
            tr.reasons[t] = "size"


def sequences_from_tracks(tracks: List[Track], cfg: GTConfig) -> Tuple[List[Dict], np.ndarray]:
    """Tracks with >= ``min_frames`` trusted frames, as {start, boxes (x,y,w,h or None per frame)}, and
    the two methods' per-side disagreement (px, trusted frames x 4 sides)."""
    out: List[Dict[str, Any]] = []
    pooled: List[np.ndarray] = []
    for tr in tracks:
        _size_check(tr, cfg)
        trusted = sorted(t for t, r in tr.reasons.items() if r == "")
        if len(trusted) < cfg.min_frames:
            continue
        t0, t1 = trusted[0], trusted[-1]
        boxes: List[Optional[List[float]]] = []
        for t in range(t0, t1 + 1):
            if tr.reasons.get(t) == "":
                x1, y1, x2, y2 = (float(v) for v in tr.boxes[t])
                boxes.append([round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)])
            else:
                boxes.append(None)
        dis = np.array([tr.disagreement[t] for t in trusted])
        pooled.append(dis)
        dropped: Dict[str, int] = {}
        for t in range(t0, t1 + 1):
            r = tr.reasons.get(t, "lost")
            if r:
                dropped[r] = dropped.get(r, 0) + 1
        out.append({"start": t0, "boxes": boxes, "trusted": len(trusted), "dropped": dropped,
                    "disagreement_px": _spread(dis)})
    out.sort(key=lambda s: s["start"])
    return out, np.concatenate(pooled) if pooled else np.zeros((0, 4))


def _spread(dis: np.ndarray) -> Dict[str, float]:
    """Summary of per-side disagreements (trusted frames x 4): per side and worst side per frame."""
    worst = dis.max(axis=1)
    return {"side_mean": round(float(dis.mean()), 3), "side_median": float(np.median(dis)),
            "worst_side_median": float(np.median(worst)), "worst_side_p95": float(np.percentile(worst, 95))}


def generate(frames: Callable[[], Iterable[np.ndarray]], cfg: GTConfig = GTConfig(),
             progress: Optional[Callable[[str], None]] = None, total: Optional[int] = None) -> Dict:
    """Ground truth for a static-camera video. ``frames()`` yields the RGB frames afresh on each call.

    Returns ``{"config", "frames", "size", "sequences": [...], "stats"}`` (see the module docstring).
    """
    say = progress or (lambda msg: None)
    say("[gt] median background, then MOG2's learning pass")
    background = median_background(frames(), cfg.background_step)
    height, width = background.shape[:2]
    per_frame: List[FrameBlobs] = []
    with progress_bar(total or 0, "[gt] both methods", enabled=progress is not None) as bar:
        for ma, mb in zip(median_masks(frames(), background, cfg), mog2_masks(frames, cfg)):
            per_frame.append(classify(_blobs(ma, cfg.min_area), _blobs(mb, cfg.min_area), width, height, cfg))
            bar.update()
    seqs, dis = sequences_from_tracks(link(per_frame, cfg), cfg)
    stats: Dict[str, Any] = {"sequences": len(seqs), "trusted_frames": int(sum(s["trusted"] for s in seqs)),
             "absent_frames": int(sum(len(s["boxes"]) - s["trusted"] for s in seqs))}
    if seqs:
        stats["disagreement_px"] = _spread(dis)
    return {"config": asdict(cfg), "frames": len(per_frame), "size": [width, height], "sequences": seqs,
            "stats": stats}
