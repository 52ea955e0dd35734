"""QoS profiles for our topics and loud incompatible-QoS reporting (the classic silent failure)."""
from __future__ import annotations

from typing import Callable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

try:  # Iron and newer
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks  # type: ignore

# Images: reliable, keep-last 1. Measured on one machine with Fast DDS defaults, a best-effort reader
# loses most 640x480 frames sent from another process (fragmented UDP, small socket buffers) while a
# reliable one gets them all; keep-last 1 still means we only ever look at the newest frame. A camera
# that publishes best-effort needs qos_overrides./<topic>.subscription.reliability: best_effort.
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
DETECTIONS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.VOLATILE)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
IMAGE_OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Services: rclpy's default keeps 10 requests and 10 answers; of 200 set_target calls sent at once 11 were
# answered, of a 50-call burst of enable 20-39 (measured from another process). rclpy's own parameter
# services keep 1000; ours keep 1000 too: every call of a burst is answered, and the queue stays bounded.
SERVICE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)


def _policy_name(event) -> str:
    try:
        from rclpy.qos import QoSPolicyKind
        return QoSPolicyKind(event.last_policy_kind).name
    except Exception:  # pragma: no cover - older enums
        return str(event.last_policy_kind)


def subscription_events(report: Callable[[str], None], topic: str) -> SubscriptionEventCallbacks:
    """Event callbacks that report which QoS policy keeps a publisher from matching."""
    def incompatible(event) -> None:
        report(f"incompatible QoS on subscription '{topic}': policy {_policy_name(event)} does not match a "
               f"publisher ({event.total_count} so far). Override it in the params file: "
               f"qos_overrides: {{{topic}: {{subscription: {{<policy>: <value>}}}}}}")
    return SubscriptionEventCallbacks(incompatible_qos=incompatible)


def publisher_events(report: Callable[[str], None], topic: str) -> PublisherEventCallbacks:
    def incompatible(event) -> None:
        report(f"incompatible QoS on publisher '{topic}': policy {_policy_name(event)} does not match a "
               f"subscriber ({event.total_count} so far)")
    return PublisherEventCallbacks(incompatible_qos=incompatible)
