"""What crosses the wire: proto, tensor and SenML codecs, the proto-to-core dispatch, gRPC channels."""
