"""General-purpose model servers serving kws's model through kws's own model and feature code, as a
user of each would deploy it: the peers `make bench-peers` measures kws against. Each runs in its own
virtual environment (requirements/peers-*.txt), never in kws's."""
