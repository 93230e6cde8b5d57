"""Generated code of protos/ (``make protos``); the proto package stays ``kws.v1``."""
