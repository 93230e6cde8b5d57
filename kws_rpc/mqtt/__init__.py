"""Cooperative inference over MQTT: the topic layout and its ACL, broker settings, the inference worker
(``kws-worker``), the client that publishes clips and collects the votes (``coop.CoopClient``; the runs
over a data set split are ``kws_rpc.lab.coop``), the ballot that decides when a clip is done, and an
embedded amqtt broker for demos (``kws-broker``; production and the tests use mosquitto). Messages are
the kws.v1 protos; no TensorFlow here."""
