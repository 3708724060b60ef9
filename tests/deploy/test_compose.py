"""deploy/compose.yaml cannot be run here (no container engine): check that it
describes the documented layout and runs commands stanfleet has."""

from __future__ import annotations

from pathlib import Path

import pytest

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"


def test_compose_describes_the_three_machine_layout():
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert sum(name.startswith("nats") for name in services) == 3
    streaming = [s["command"] for n, s in services.items() if n.startswith("streaming")]
    # one FT group: both read [streaming] ft_group from the site config
    assert len(streaming) == 2 and all("--site" in c for c in streaming)
    assert '[streaming] ft_group = "fleet"' in COMPOSE.read_text()
    listeners = [s["command"] for n, s in services.items() if n.startswith("listener")]
    assert len(listeners) == 2 and len({c[c.index("--name") + 1] for c in listeners}) == 2
    assert {"postgres", "release-serve", "dashboard"} <= set(services)
    for name, s in services.items():
        if s.get("image") == "localhost/stanfleet":
            flag = "--site" if s["command"][0] == "streaming-server" else "--config"
            assert flag in s["command"], name
