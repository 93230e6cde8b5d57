"""Cooperative inference over MQTT: topic layout, brokers (embedded amqtt, mosquitto for tests), the
inference worker and the vote collector. Payloads are the kws.v1 protos; no TensorFlow here."""
