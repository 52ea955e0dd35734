"""The overlay (rviz refined/overlay, replay videos): labels drawn once, boxes told apart, a legend."""
import cv2
import numpy as np

from ar_ros.draw import GT_COLOR, color_for, draw_targets

GREY = 90
BOX = (200.0, 150.0, 120.0, 90.0)


def frame():
    return np.full((480, 640, 3), GREY, np.uint8)


def changed(a, b):
    return np.any(a != b, axis=2)


def test_label_is_one_copy_of_its_text():
    """OpenCV 5 advances glyphs by the stroke thickness: an outline drawn thick under thin text came out
    as a second, longer copy ("target 0.98" with a ghost). The ink must be as wide as the text, once."""
    tid = "pedestrian_with_a_long_track_id"
    out = draw_targets(frame(), [(tid, BOX, BOX, 0.98, False)], legend=False)
    above = out[:int(BOX[1]) - 4]  # the label sits above the refined box
    plate = np.all(above == color_for(0), axis=2)
    ink = np.any(above != GREY, axis=2) & ~plate
    cols = np.nonzero(ink.any(axis=0))[0]
    scale = max(0.4, 480 / 960)
    (width, _), _ = cv2.getTextSize(f"{tid} 0.98", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    assert cols.size and abs((cols[-1] - cols[0] + 1) - width) <= 3, (cols[0], cols[-1], width)
    rows = np.nonzero(ink.any(axis=1))[0]
    assert rows[-1] - rows[0] < 20  # one line of text, not two


def edge_profile(img, y, x0, x1):
    """Which pixels along row y (between x0 and x1) were drawn on."""
    return changed(img[y:y + 1, x0:x1], frame()[y:y + 1, x0:x1])[0]


def test_base_refined_and_gt_boxes_look_different():
    img = frame()
    x, y, w, h = (int(v) for v in BOX)
    base = draw_targets(img, [("a", BOX, (np.nan,) * 4, 0.5, False)], legend=False)
    refined = draw_targets(img, [("a", (np.nan,) * 4, BOX, 0.5, False)], legend=False)
    gt = draw_targets(img, [], gt=BOX, legend=False)
    # the base box is dashed: its top edge is drawn on part of its length only
    drawn = edge_profile(base, y, x + 2, x + w - 2).mean()
    assert 0.3 < drawn < 0.75, drawn
    # the refined box is solid and thicker than the others
    assert edge_profile(refined, y, x + 2, x + w - 2).all()
    col = x + w // 2
    thickness = {name: int(changed(im[y - 8:y + 8, col:col + 1], img[y - 8:y + 8, col:col + 1]).sum())
                 for name, im in (("refined", refined), ("gt", gt))}
    assert thickness["refined"] >= thickness["gt"] + 1, thickness
    # ground truth: solid, white
    assert edge_profile(gt, y, x + 2, x + w - 2).all()
    brightest = gt[y - 1:y + 2, col].max(axis=0)  # anti-aliased: the line's centre row
    assert brightest.min() >= 230 and np.ptp(brightest) == 0 and GT_COLOR == (255, 255, 255)


def test_legend_names_what_is_drawn():
    img = frame()
    corner = (slice(380, 480), slice(0, 200))
    with_gt = draw_targets(img, [("a", BOX, BOX, 0.9, False)], gt=BOX)
    without_gt = draw_targets(img, [("a", BOX, BOX, 0.9, False)])
    none = draw_targets(img, [("a", BOX, BOX, 0.9, False)], legend=False)
    assert not changed(none[corner], img[corner]).any()
    rows_gt = np.nonzero(changed(with_gt[corner], img[corner]).any(axis=1))[0]
    rows = np.nonzero(changed(without_gt[corner], img[corner]).any(axis=1))[0]
    # three entries (GT, base, refined) take more height than two (base, refined)
    assert rows.size and rows_gt.size > rows.size
    # the refined sample line is drawn in the target's colour
    assert np.any(np.all(without_gt[corner] == color_for(0), axis=2))


def test_videos_are_h264_where_opencv_can_and_say_so_once_where_not(tmp_path, caplog):
    from ar_ros import draw
    draw.video_codec.cache_clear()
    with caplog.at_level("WARNING", logger="ar_ros.draw"):
        for k in range(2):
            writer = draw.open_video(tmp_path / f"v{k}.mp4", 10.0, (64, 48))
            for _ in range(5):
                writer.write(np.zeros((48, 64, 3), np.uint8))
            writer.release()
    codec = draw.video_codec()
    warnings = [r for r in caplog.records if "H.264" in r.getMessage()]
    assert len(warnings) == (0 if codec == "avc1" else 1)
    cap = cv2.VideoCapture(str(tmp_path / "v1.mp4"))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    # FFmpeg reports an mp4v stream as FMP4
    assert cap.read()[0] and fourcc.lower() in ({"avc1", "h264"} if codec == "avc1" else {"mp4v", "fmp4"}), fourcc
