"""The job's use of the cyclic garbage collector while a flow runs."""

from __future__ import annotations

import gc
import weakref

from firstmile.flows.run import _freeze_survivors


class Node:
    peer: Node | None = None


def test_what_survives_a_full_collection_is_frozen_and_young_cycles_still_go() -> None:
    gc.callbacks.append(_freeze_survivors)
    gc.disable()  # no collection of its own between making ``kept`` and counting
    try:
        kept = [Node() for _ in range(1000)]
        before = gc.get_freeze_count()
        gc.enable()
        gc.collect()  # a full collection: its survivors are frozen after it
        assert gc.get_freeze_count() >= before + len(kept)
        young = Node()
        young.peer = young  # a cycle made after the freeze
        gone = weakref.ref(young)
        del young
        gc.collect(1)  # a young collection, as the collector runs them by itself
        assert gone() is None
    finally:
        gc.enable()
        gc.callbacks.remove(_freeze_survivors)
        gc.unfreeze()
