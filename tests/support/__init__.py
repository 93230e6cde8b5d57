"""Helpers for tests and benches: ports, real servers and brokers as subprocesses."""
