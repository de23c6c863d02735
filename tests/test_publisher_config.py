"""The node's link settings from [publisher] reach its socket."""

from __future__ import annotations

import zmq

from common.config import PublisherConfig
from node.outbox import Outbox
from node.publisher import Publisher


def test_link_ping_sets_zeromqs_keepalive_and_its_timeout():
    ctx = zmq.Context()
    try:
        for ping_s, ivl_ms in ((PublisherConfig().link_ping_s, 2_000), (10.0, 10_000)):
            pub = Publisher("n1", "tcp://127.0.0.1:1", Outbox(None), PublisherConfig(link_ping_s=ping_s), ctx=ctx)
            try:
                assert pub._sock.getsockopt(zmq.HEARTBEAT_IVL) == ivl_ms
                assert pub._sock.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 3 * ivl_ms
            finally:
                pub.close()
    finally:
        ctx.destroy(linger=0)
