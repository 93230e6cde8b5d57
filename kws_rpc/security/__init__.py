"""Bearer tokens and rate limits, TLS configuration, the development certificates."""
