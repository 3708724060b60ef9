"""A canary rollout on simulated devices: `release publish --canary PCT` installs
on the devices firmware/lib/rollout.py selects (by device ID alone), the
others ack it without installing; `release promote` brings in the rest."""

from __future__ import annotations

from conftest import GOOD, stanfleet
from stanfleet.fleet.firmware_code import load

rollout = load("rollout")
PCT = 50


def fleet_ids() -> tuple[list[str], list[str]]:
    """Two canary devices and two others, found by the same rule the devices use."""
    canary, rest = [], []
    i = 0
    while len(canary) < 2 or len(rest) < 2:
        i += 1
        d = f"C{i:07X}"
        group = canary if rollout.selected(d, PCT) else rest
        if len(group) < 2:
            group.append(d)
    return canary, rest


async def test_canary_then_promote(stan_server, make_fleet, backend, releases, tmp_path):
    canary, rest = fleet_ids()
    fleet = await make_fleet(*canary, *rest)
    for d in canary + rest:
        await fleet.expect(d, "stanfleet: connected")
    args = ("--releases", str(releases), "--url-base", backend.url_base,
            "--db", str(tmp_path / "fleet.db"))
    rc, out = await stanfleet(stan_server, "release", "publish", GOOD, "--canary", str(PCT), *args)
    assert rc == 0, out
    for d in canary:
        await fleet.expect(d, f"stanfleet: connected client=device-{d} version={GOOD}", timeout=60)
    for d in rest:
        line = await fleet.expect(d, "release acked seq=1")
        assert f"not in the {PCT}% canary" in line
        assert fleet.find(d, "ota state=downloading") is None

    rc, out = await stanfleet(stan_server, "release", "promote", GOOD, *args)
    assert rc == 0, out
    for d in rest:
        await fleet.expect(d, f"stanfleet: connected client=device-{d} version={GOOD}", timeout=60)
    for d in canary:  # the promotion is nothing new for a canary device
        line = await fleet.expect(d, "release acked seq=2")
        assert "is not newer" in line
