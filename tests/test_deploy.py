"""The deployment files (deploy/): no Docker engine or systemd runs here, so every command line in the
systemd units, the compose file and the Dockerfile is parsed by kws's own argument parsers, with the
environment their env files give, and every file they name must exist: files of the repo in the repo,
secrets (certificates, tokens, MQTT passwords) where the test installs them as the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
OPT = "/opt/kws"  # where the units and the image put the repo
ETC = "/etc/kws"  # where they expect secrets and env files
PORTS = {"50051", "8080", "9100", "8883"}


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/etc/kws as an operator fills it: dev certificates, a token file, MQTT passwords, env files."""
    from kws_rpc.security.certs import make_dev_pki

    etc = tmp_path_factory.mktemp("etc-kws")
    make_dev_pki(etc / "certs", clients=("edge", "coop", "w0", "w1", "w2"))
    (etc / "tokens.txt").write_text("edge:" + "e" * 40 + "\n")
    (etc / "edge.token").write_text("e" * 40 + "\n")
    (etc / "mqtt").mkdir()
    for w in ("w0", "w1", "w2"):
        (etc / "mqtt" / f"{w}.pass").write_text(f"{w}-password\n")
    (etc / "edge.mqtt-password").write_text("edge-password\n")
    return etc


def localize(value: str, etc: Path) -> str:
    """Installed paths -> this checkout and the test's /etc/kws."""
    return value.replace(f"{OPT}/.venv/bin/", "").replace(f"{OPT}/", f"{REPO}/").replace(ETC, str(etc))


def env_file(name: str, etc: Path) -> dict[str, str]:
    env = {}
    for line in (DEPLOY / "env" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = localize(value, etc)
    return env


def check_command(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, cwd: Path = REPO,
                  plaintext: bool = False) -> str:
    """Parses argv with the parser of the command it names (in env); returns the command's name.
    ``plaintext``: a server that says --insecure is accepted (behind a mesh that carries TLS, as in KServe)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(cwd)
    cmd, args = Path(argv[0]).name, argv[1:]
    if cmd == "kws-server":
        from kws_rpc.serving.server import parse_args

        config = parse_args(args)
        assert all(p.is_file() for p in config.models), config.models
        assert config.tls is not None or (plaintext and config.insecure), "a server on the LAN must speak TLS"
        if config.host not in ("127.0.0.1", "localhost"):
            assert {str(config.port), str(config.gateway_port)} <= PORTS
    elif cmd == "kws-worker":
        from kws_rpc.mqtt.options import broker_settings
        from kws_rpc.mqtt.worker import build_parser

        a = build_parser().parse_args(args)
        assert Path(a.model).is_file(), a.model
        s = broker_settings(a.broker, a)
        assert s.tls and s.tls_ca and Path(s.tls_ca).is_file() and s.password and s.username == a.worker_id
    elif cmd == "kws-edge":
        from edge import cli

        assert args and args[0] in cli.COMMANDS, args
        if args[0] == "eval":
            from edge.lab import evaluate

            assert evaluate.config_from_args(evaluate.parse_args(args[1:])) is not None
        else:  # the deployed listener: every setting its parser takes, the server's TLS and the broker's
            assert args[0] == "listen", args
            from edge.cascade import server_credentials
            from kws_rpc.mqtt.options import broker_settings

            a = cli.listen_parser().parse_args(args[1:])
            assert a.input == "mic" and a.verify == "grpc"
            client_tls, token = server_credentials(a, "kws-edge listen")
            assert client_tls is not None and client_tls.cert and token, "the Pi asks the server over mutual TLS with a token"
            s = broker_settings(a.mqtt, a)
            assert s.tls and s.tls_ca and Path(s.tls_ca).is_file() and s.username and s.password
    else:
        raise AssertionError(f"unknown command {cmd}")
    return cmd


def unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


@pytest.mark.parametrize("name, instance, env_name, command", [
    ("kws-server.service", "", "server.env", "kws-server"),
    ("kws-worker@.service", "w1", "worker.env", "kws-worker"),
    ("kws-edge.service", "", "edge.env", "kws-edge"),
])
def test_systemd_units(name: str, instance: str, env_name: str, command: str, secrets: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    keys = unit(DEPLOY / "systemd" / name)
    (env_path,) = keys["EnvironmentFile"]
    assert Path(env_path.replace("%i", "w0")).name.replace("-w0", "") == env_name
    env = env_file(env_name, secrets)
    (line,) = keys["ExecStart"]
    line = line.replace("%i", instance)
    assert line.startswith(f"{OPT}/.venv/bin/{command} ")
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], localize(line, secrets))
    assert check_command(shlex.split(expanded), env, monkeypatch) == command
    assert keys["WorkingDirectory"] == [OPT] and keys.get("KillSignal", ["SIGTERM"]) == ["SIGTERM"]


def test_compose_file(secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"server", "mosquitto", "worker0", "worker1", "worker2"} <= set(services)
    seen = set()
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and "secrets" not in source and "certs" not in source:  # else: made by the
                # operator (header of the file), or a named volume
                assert (DEPLOY / source).exists(), f"{name}: {source}"
        if name == "mosquitto":
            assert any("mosquitto-secure.conf" in v for v in svc["volumes"])
            continue
        env = {k: localize(v, secrets) for k, v in svc.get("environment", {}).items()}
        argv = [localize(a, secrets) for a in svc["command"]]
        argv = [a.replace("mqtts://mosquitto:8883", "mqtts://127.0.0.1:8883") for a in argv]
        seen.add(check_command(argv, env, monkeypatch))
        if svc["build"]["dockerfile"]:
            assert (REPO / svc["build"]["dockerfile"]).is_file()
    assert seen == {"kws-server", "kws-worker"}
    workers = [services[f"worker{i}"]["command"] for i in range(3)]
    models = {c[c.index("--model") + 1] for c in workers}
    import json

    assert models == {f"models/{m}.tflite" for m in json.loads((REPO / "models" / "ensemble.json").read_text())["members"]}


def test_dockerfile(secrets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    (cmd,) = [line for line in lines if line.startswith("CMD ")]
    import json

    argv = json.loads(cmd[4:])
    tls = {"KWS_TLS_CERT": str(secrets / "certs/server.pem"), "KWS_TLS_KEY": str(secrets / "certs/server.key")}
    assert check_command(argv, tls, monkeypatch) == "kws-server"
    exposed = {p for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {"50051", "8080", "9100"}
