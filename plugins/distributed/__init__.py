"""The distributed runtime: one run split into market-data, strategy, execution and monitor
nodes over a message bus (see docs/distributed.md)."""
