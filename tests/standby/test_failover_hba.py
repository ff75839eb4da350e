"""How ``laterbased check`` reads a pg_hba.conf for the failover plan: first matching line
wins, as in postgres; lines that cannot admit a workstation are skipped (issue 19)."""

from __future__ import annotations

import pytest

from laterbased.standby.failover import judge_hba, parse_hba

LIBRARY = "Resolve Projects"
LAN = "192.168.1.20"


@pytest.mark.parametrize(
    ("hba", "outcome"),
    [
        ("host all all 0.0.0.0/0 md5", "admitted md5"),
        ("host all all 192.168.1.0/24 scram-sha-256", "admitted scram-sha-256"),
        ("host all all 192.168.1.0 255.255.255.0 md5", "admitted md5"),
        ("host all all samenet md5", "admitted md5"),
        # This host only, or a single address: no workstation matches.
        ("host all all samehost md5", "refused"),
        ("host all all 192.168.1.20/32 md5", "refused"),
        ("host all all 127.0.0.1/32 md5\nhost all all 10.0.0.0/8 md5", "refused"),
        ("local all all trust", "refused"),
        ("host replication all 0.0.0.0/0 md5", "refused"),
        ("host all all 0.0.0.0/0 reject\nhost all all 0.0.0.0/0 md5", "refused"),
        ('host "Resolve Projects" postgres 0.0.0.0/0 md5', "admitted md5"),
        ("host other postgres 0.0.0.0/0 md5", "refused"),
        ("host all other 0.0.0.0/0 md5", "refused"),
        ("host all +editors 0.0.0.0/0 md5", "uncertain"),
        ("host all all .studio.lan md5", "uncertain"),
        ("host all all 0.0.0.0/0 trust", "trust"),
        ("# host all all 0.0.0.0/0 md5", "refused"),
    ],
)
def test_the_first_line_a_workstation_meets_decides(hba: str, outcome: str) -> None:
    verdict = judge_hba(parse_hba(hba), [LIBRARY], "postgres", LAN)
    if outcome.startswith("admitted"):
        assert verdict.methods == {LIBRARY: outcome.split()[1]}
        assert not verdict.refused and not verdict.uncertain
    elif outcome == "refused":
        assert verdict.refused and not verdict.admitted
    elif outcome == "uncertain":
        assert verdict.uncertain
    else:
        assert verdict.trust
