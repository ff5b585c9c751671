"""``natkit turn render --monitor``: the monitor in compose, Kubernetes and systemd, validated by the real tools.

Kubernetes manifests against the OpenAPI schemas (kubernetes-validate), the PrometheusRule's rules by promtool,
the compose file by docker-compose's own parser, the unit by systemd-analyze, and the rendered monitor.toml by
running ``natkit monitor once`` with it against a real coturn.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monitor_servers import Coturn, require_prometheus

from natkit.coturn.profiles import build
from natkit.errors import UsageError
from natkit.render import Deployment, example_deployment, render, write

yaml = pytest.importorskip("yaml")
K8S_VERSION = "1.30.0"


def deployment(**kw) -> Deployment:
    return dataclasses.replace(example_deployment(), monitor=True, **kw)


def test_kubernetes_monitor_manifests_validate(tmp_path):
    from natkit.pytest_plugin import _require

    try:
        import kubernetes_validate as kv
    except ImportError:
        _require("NATKIT_REQUIRE_K8S_VALIDATE", False, "kubernetes-validate is not installed")
        return
    files = render("kubernetes", deployment(monitor_targets=("turn:turn.example.org:3478", "turns:turn.example.org:5349")))
    docs = {name: yaml.safe_load(text) for name, text in files.items() if name.startswith("monitor-")}
    assert set(docs) == {"monitor-config.yaml", "monitor-deployment.yaml", "monitor-service.yaml", "monitor-servicemonitor.yaml",
                         "monitor-prometheusrule.yaml"}
    for name in ("monitor-config.yaml", "monitor-deployment.yaml", "monitor-service.yaml"):
        kv.validate(docs[name], K8S_VERSION, strict=True)
    assert set(docs) <= set(yaml.safe_load(files["kustomization.yaml"])["resources"])
    dep = docs["monitor-deployment.yaml"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"] == ["monitor", "serve", "--config", "/etc/natkit/monitor.toml"]
    assert c["env"] == [{"name": "TURN_SECRET_0", "valueFrom": {"secretKeyRef": {"name": "natkit-coturn-auth", "key": "secret-0"}}}]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # the monitor's pods are not the coturn DaemonSet's: no selector overlap
    ds = yaml.safe_load(files["daemonset.yaml"])
    ds_sel = ds["spec"]["selector"]["matchLabels"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert not all(pod_labels.get(k) == v for k, v in ds_sel.items())
    assert all(pod_labels[k] == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    svc, sm = docs["monitor-service.yaml"], docs["monitor-servicemonitor.yaml"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "interval": "15s"}]
    conf = docs["monitor-config.yaml"]["data"]["monitor.toml"]
    assert 'uris = ["turn:turn.example.org:3478", "turns:turn.example.org:5349"]' in conf and 'secret_env = "TURN_SECRET_0"' in conf
    assert "example-new" not in "".join(files.values()) and "example-old" not in "".join(files.values())


def test_prometheus_rule_holds_the_rules_promtool_accepts(tmp_path):
    require_prometheus()
    files = render("kubernetes", deployment())  # the example's external-ip is the target
    rule = yaml.safe_load(files["monitor-prometheusrule.yaml"])
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rule["spec"]))
    out = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "SUCCESS: 11 rules found" in out.stdout, out.stdout + out.stderr
    shipped = yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "natkit-monitor-rules.yml").read_text())
    assert rule["spec"] == shipped


def test_kubernetes_monitor_needs_targets_without_external_ip():
    cfg = build("recommended", secrets=("s",)).config
    with pytest.raises(UsageError, match="URIs to probe") as info:
        render("kubernetes", Deployment(cfg, monitor=True))
    assert "--monitor-target" in info.value.hint


def test_compose_monitor_service_parses_with_docker_compose(tmp_path):
    files = render("compose", deployment())
    doc = yaml.safe_load(files["docker-compose.yml"])
    mon = doc["services"]["monitor"]
    assert mon["network_mode"] == "host" and mon["read_only"] is True and mon["cap_drop"] == ["ALL"]
    assert mon["env_file"] == ["turn.env"] and mon["command"][:2] == ["monitor", "serve"]
    assert not any("SECRET" in part for part in mon["command"])
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed")
    write(files, tmp_path)
    (tmp_path / "turn.env").write_text("TURN_SECRET_0=a\nTURN_SECRET_1=b\n")
    out = subprocess.run([compose, "-f", "docker-compose.yml", "config", "-q"], cwd=tmp_path, capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 0, out.stderr


def test_systemd_monitor_unit_verifies(tmp_path):
    natkit = str(Path(sys.executable).with_name("natkit"))
    files = render("systemd", deployment(natkit=natkit))
    unit = files["natkit-coturn-monitor.service"]
    assert f"ExecStart={natkit} monitor serve --config /etc/natkit/monitor/monitor.toml" in unit
    assert "EnvironmentFile=/etc/natkit/coturn/turn.env" in unit and "DynamicUser=yes" in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / "natkit-coturn-monitor.service"
    path.write_text(unit)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


@pytest.mark.parametrize("target", ["compose", "systemd"])
def test_rendered_monitor_config_probes_a_real_coturn(target, tmp_path):
    """The rendered monitor.toml, as written, drives natkit monitor once against a coturn with that deployment's port."""
    with Coturn(tmp_path, tls_days=30) as server:
        cfg = build("recommended", secrets=("placeholder",), listening_ips=("127.0.0.1",), port=server.port,
                    allow_loopback_peers=True).config
        files = render(target, Deployment(cfg, monitor=True, natkit="/usr/bin/true"))
        write(files, tmp_path / "out")
        conf = (tmp_path / "out" / "monitor.toml").read_text()
        assert f'"turn:127.0.0.1:{server.port}"' in conf and "expect_relayed_ip" not in conf  # loopback: nothing to expect
        env = {**os.environ, "TURN_SECRET_0": server.secret}
        out = subprocess.run([sys.executable, "-m", "natkit.cli.app", "monitor", "once", "--json", "--config", str(tmp_path / "out" / "monitor.toml")],
                             capture_output=True, text=True, env=env, check=False, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr
        assert server.secret not in out.stdout + out.stderr
