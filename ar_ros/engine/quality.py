"""What the engine does with a network's box-quality estimate (``quality``, ``base_quality``).

A network with a quality head (``model.quality.QualityHead``) predicts, per target and frame, the IoU of
its refined box with the true box (``quality``) and the IoU of the base box it was given (``base_quality``).
Three decisions follow from them, here in one place and without torch:

* :func:`choose`: output the base box instead of the refined one when the base box is predicted to be
  better by at least a margin (``Result.kept``, reason :data:`BASE_BETTER`): a good box stays good;
* :class:`LostState`: a target is lost when its quality stays below ``lost_quality`` for ``lost_frames``
  frames in a row (a tracker on a distractor, a target gone out of view); a new target box resets it;
* :func:`trusted`: whether a result may be fed back to the base tracker (closed loop): not lost, not the
  kept base box, not a fallback, and the base box predicted off (``base_quality`` below ``reseed_below``):
  a tracker that is on its target keeps its own state.

The defaults were chosen on validation data only, with ``tools/quality_report.py CHECKPOINT --fit OUT --suite
validation --base jitter --base oracle --base csrt``, for the quality head the shipped model carries
(``runs/q5``, MODEL_CARD.md): :data:`QUALITY_MARGIN` is the margin with the largest mean, over the validation
suite's three bases, of the output box's mean IoU (``eval.calibration.best_margin``: the criterion ``keep_iou``
was chosen by; a larger margin keeps fewer right boxes, a smaller one more wrong tracker boxes); in closed
loop it is larger (``options.CLOSED_LOOP_GATES``). :data:`LOST_QUALITY` is the lowest threshold with the best
balanced accuracy, on 1280 validation pairs, for "the output box is off the target" (true IoU < 0.1: 96% of
those frames flagged, 2.1% of the others); :data:`LOST_FRAMES` asks for a few frames in a row, so that one
bad frame (an occlusion, a blur) does not raise the flag. Another checkpoint's head may want others: they are
node, Refiner and ``eval`` parameters.

:data:`RESEED_BELOW` was chosen on 60 held-out synthetic sequences (the validation suite and seeds 95010-95059,
none of them training or reference seeds) in CSRT's closed loop, as the threshold with the largest mean refined
AUC (docs/accuracy.md): OpenCV trackers cannot take a box into their state, so every re-seed re-initialises
them and throws their learned model away, and re-seeding a tracker that is on its target costs more than the
refined box brings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

QUALITY_MARGIN = -0.01  # base kept when base_quality >= quality + this
LOST_QUALITY = 0.31     # a frame counts towards "lost" when quality < this
LOST_FRAMES = 3         # ... for this many frames in a row
RESEED_BELOW = 0.5      # closed loop: a trusted box is fed back only when base_quality < this (1: always)
BASE_BETTER = "base better"


def check_quality_params(margin: float, lost_quality: float, lost_frames: int,
                         reseed_below: float = RESEED_BELOW) -> None:
    """``ValueError`` naming the parameter unless margin is in [-1, 1], lost_quality and reseed_below in [0, 1]
    and lost_frames >= 1."""
    if not -1.0 <= float(margin) <= 1.0:
        raise ValueError(f"quality_margin must be in [-1, 1], got {margin}")
    if not 0.0 <= float(lost_quality) <= 1.0:
        raise ValueError(f"lost_quality must be in [0, 1], got {lost_quality}")
    if int(lost_frames) != lost_frames or lost_frames < 1:
        raise ValueError(f"lost_frames must be an integer >= 1, got {lost_frames}")
    if not 0.0 <= float(reseed_below) <= 1.0:
        raise ValueError(f"reseed_below must be in [0, 1], got {reseed_below}")


def choose(quality: float, base_quality: float, margin: float = QUALITY_MARGIN) -> Tuple[bool, str]:
    """``(use_base, reason)``: the base box when ``base_quality >= quality + margin`` (reason
    :data:`BASE_BETTER`), else the refined box (reason ``""``). A margin of 1 never keeps the base box (the
    gate off)."""
    if float(margin) < 1.0 and float(base_quality) >= float(quality) + float(margin):
        return True, BASE_BETTER
    return False, ""


@dataclass
class LostState:
    """One target's lost flag: set after ``lost_frames`` frames in a row with quality below
    ``lost_quality``, cleared by the first frame at or above it and by :meth:`reset` (a new target box)."""

    lost_quality: float = LOST_QUALITY
    lost_frames: int = LOST_FRAMES
    low_frames: int = 0

    def __post_init__(self) -> None:
        check_quality_params(0.0, self.lost_quality, self.lost_frames)

    @property
    def lost(self) -> bool:
        return self.low_frames >= self.lost_frames

    def update(self, quality: float) -> bool:
        """Count this frame's quality; returns whether the target is lost now."""
        self.low_frames = self.low_frames + 1 if float(quality) < self.lost_quality else 0
        return self.lost

    def reset(self) -> None:
        """Forget the history (``Refiner.set_target``: a new box for this target)."""
        self.low_frames = 0


def trusted(result: Any, reseed_below: float = RESEED_BELOW) -> bool:
    """Whether a result's box may be fed back to the base tracker: not lost, not the kept base box, not a
    fallback, and, when the result has a base box quality (a quality head's: ``base_quality`` >= 0), that is
    below ``reseed_below`` (the tracker has drifted; 1: any). An object without a ``lost`` attribute counts as
    not lost, one without ``base_quality`` (or None, or the message's -1) as having no head."""
    if getattr(result, "lost", False) or result.kept or result.fallback:
        return False
    base_quality = getattr(result, "base_quality", None)
    return base_quality is None or base_quality < 0.0 or float(reseed_below) >= 1.0 or \
        float(base_quality) < float(reseed_below)
