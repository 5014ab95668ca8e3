"""Synthetic Segment-Spec streams with planted behaviours, written apart from the built-in
simulator so models tuned on some streams can be judged on held-out ones.

    from bench.streams import STREAMS
    stream = STREAMS["shop"](users=2000, days=21, seed=1)
    for line in stream.lines(): ...  # bytes, in event-time order
    stream.behaviour_of("shop-000042")  # the planted behaviour (ground truth)
"""

from bench.streams.b2b import B2BStream
from bench.streams.base import SIM_START, Stream
from bench.streams.devtool import DevToolStream
from bench.streams.mobile import MobileStream
from bench.streams.shop import ShopStream

STREAMS: dict[str, type[Stream]] = {
    "b2b": B2BStream,
    "devtool": DevToolStream,
    "mobile": MobileStream,
    "shop": ShopStream,
}

__all__ = ["SIM_START", "STREAMS", "Stream"]
