"""kws_rpc: keyword spotting served over gRPC, REST and MQTT, and the lab that measures it.

Layout, by role (docs/architecture.md has the whole map):

    errors.py   the domain errors; each maps once to an HTTP code and a gRPC status
    audio/      WAV (PCM16, IMA ADPCM) in and out, and the log-mel features models take
    model/      the model runtime: a TFLite model with its card, the inference core, batching, the vote
    wire/       what crosses the wire: proto and tensor codecs, SenML, encodings, the proto-to-core dispatch
    proto/      generated from protos/ by ``make protos`` (proto packages ``kws.v1`` and ``inference``, the V2 protocol)
    security/   bearer tokens and rate limits, TLS settings, development certificates
    serving/    the gRPC server, the REST gateway, limits, metrics, the supervisor
    mqtt/       cooperative inference: topics, the worker, the client (participant), the embedded broker
    lab/        work on the data set: loading it, evaluation, comparison, statistics, ensemble fitting

The import rule (checked from the real import graph by tests/test_architecture.py):

    errors <- audio <- model <- wire (and proto) <- {serving, mqtt, edge}
    security (errors only) <- {serving, mqtt, edge}

A package imports only packages to its left and its own; serving, mqtt and edge do not import one
another. lab (kws_rpc.lab, edge.lab) may import all of the above, and no runtime module imports lab.
Nothing in kws_rpc imports edge or trainers. trainers may import kws_rpc; only trainers imports
TensorFlow (kws_rpc.model.interpreter falls back to tf.lite where no TFLite runtime is installed).
"""
