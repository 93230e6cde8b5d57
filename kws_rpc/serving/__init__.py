"""The server: gRPC servicer, REST gateway, limits, metrics, and the wiring that runs them."""
