"""Dataflow builders, run modes and the ``firstmile`` command line."""
