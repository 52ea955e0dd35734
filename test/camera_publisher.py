"""A stand-in camera + base tracker in its own process: publishes bgr8 frames and detections.

    python camera_publisher.py --frames 60 --rate 10 --width 640 --height 480 [--best-effort]

Frames show a bright rectangle moving left to right; each frame is followed at once by its detections
(as ``ros2 bag play`` does; ``--order detections-first``: preceded, as a base tracker on a faster path
does; ``--order alternate``: one, then the other): its box (id "obj") with the frame's stamp, and that stamp as the class_id
("<sec>.<nanosec>"), which the refiner copies to its output, so a listener sees which detections went
out under which image header. Prints the number of frames sent on exit.
"""
import argparse
import sys
import time

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from ros_helpers import detections_msg, image_msg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--best-effort", action="store_true")
    ap.add_argument("--wait-subscribers", type=float, default=20.0)
    ap.add_argument("--frame-id", default="cam")
    ap.add_argument("--target-id", default="obj")
    ap.add_argument("--first-sec", type=int, default=1000)
    ap.add_argument("--stamp-step", type=float, default=0.1, help="seconds between frame stamps")
    ap.add_argument("--order", choices=("image-first", "detections-first", "alternate"), default="image-first",
                    help="publish each frame's detections after it, before it, or in turn")
    args, ros_args = ap.parse_known_args()
    rclpy.init(args=[sys.argv[0]] + ros_args)
    node = Node("camera")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT if args.best_effort
                     else ReliabilityPolicy.RELIABLE)
    img_pub = node.create_publisher(Image, "image", qos)
    det_pub = node.create_publisher(Detection2DArray, "detections", 10)
    end = time.monotonic() + args.wait_subscribers
    while time.monotonic() < end and (img_pub.get_subscription_count() == 0 or det_pub.get_subscription_count() == 0):
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)
    rng = np.random.default_rng(0)
    background = rng.integers(0, 90, size=(args.height, args.width, 3), dtype=np.uint8)
    sent = 0
    for i in range(args.frames):
        t0 = time.monotonic()
        frame = background.copy()
        w, h = args.width // 6, args.height // 6
        x = int(20 + (args.width - w - 40) * i / max(args.frames - 1, 1))
        y = args.height // 2 - h // 2
        frame[y:y + h, x:x + w] = (40, 200, 230)
        sec, nsec = divmod(args.first_sec * 10**9 + round(i * args.stamp_step * 1e9), 10**9)
        image = image_msg(frame, sec, nsec, encoding="bgr8", frame_id=args.frame_id)
        dets = detections_msg([(args.target_id, (x - 3.0, y + 2.0, w + 6.0, h - 4.0))], sec, nsec,
                              frame_id=args.frame_id, class_id=f"{sec}.{nsec:09d}")
        order = [(img_pub, image), (det_pub, dets)]
        first = args.order == "detections-first" or (args.order == "alternate" and i % 2 == 1)
        for pub, msg in order[::-1] if first else order:
            pub.publish(msg)
        sent += 1
        rclpy.spin_once(node, timeout_sec=0.0)
        time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - t0)))
    time.sleep(1.0)
    print(f"sent {sent}", flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
