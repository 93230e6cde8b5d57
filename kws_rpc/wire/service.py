"""The gRPC service as both ends name it: its full name (method paths are ``/<SERVICE>/Predict``) and the
trailing metadata key in which the server names the ``kws_rpc.errors`` class of a failure."""

from __future__ import annotations

from kws_rpc.proto.kws.v1 import kws_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["KeywordSpotting"].full_name  # "kws.v1.KeywordSpotting"
# Names the kws_rpc.errors class of a failure, so the REST gateway can answer the exact HTTP status
# (INVALID_ARGUMENT alone cannot tell 400 from 413 or 422).
ERROR_KEY = "kws-error"
