"""The sandbox's policy as data: egress rules, the firewall ruleset and the bubblewrap command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from weightvault.errors import ConfigError, EgressPolicyError
from weightvault.sandbox.policy import (
    BwrapSpec,
    Destination,
    broker_destination,
    bwrap_argv,
    nft_ruleset,
    parse_allow,
    parse_publish,
    unreadable,
)


@pytest.mark.parametrize(
    "rule",
    ["*", "*:443", "0.0.0.0:443", "[::]:443", "10.0.0.0/8:443", "10.0.0.1:*", "10.0.0.1:0", "10.0.0.1:1-1024",
     "10.0.0.1:80,443", "10.0.0.1:65536", "example.com:443", "224.0.0.1:5353", "10.0.0.255:53", "10.0.0.1", ":443"],
)  # fmt: skip
def test_wildcards_ranges_and_names_are_refused(rule: str) -> None:
    with pytest.raises(EgressPolicyError):
        parse_allow(rule)


def test_one_address_and_one_port_is_allowed() -> None:
    assert Destination("10.1.2.3", 443) == parse_allow("10.1.2.3:443")
    assert Destination("fd00::5", 8443) == parse_allow("[fd00::5]:8443")
    assert Destination("127.0.0.1", 8443) == broker_destination("https://localhost:8443")
    with pytest.raises(ConfigError):
        broker_destination("https://broker.example:8443")  # names are not resolved for the sandbox


def test_the_ruleset_accepts_only_relays_and_published_ports_and_counts_the_rest() -> None:
    rules = nft_ruleset([Destination("127.0.0.1", 8443), Destination("fd00::5", 9000)], [8000])
    accepts = [line.strip() for line in rules.splitlines() if line.strip().endswith("accept")]
    assert accepts == [
        "ct state established,related accept",
        'oif "lo" ip daddr 127.0.0.1 tcp dport 8443 accept',
        'oif "lo" ip6 daddr fd00::5 tcp dport 9000 accept',
        'oif "lo" ip daddr 127.0.0.1 tcp dport 8000 accept',
    ]
    assert "policy drop;" in rules
    assert rules.count("reject") == 6
    assert "counter drop" in rules
    assert "@blocked4" in rules
    assert "@blocked6" in rules


def test_bubblewrap_drops_privileges_and_mounts_only_what_it_needs(tmp_path: Path) -> None:
    model = tmp_path / "deep" / "model"
    model.mkdir(parents=True)
    spec = BwrapSpec(
        ro_paths=[tmp_path / "missing"], model=model, scratch=tmp_path, uid=65534, gid=65534, env={"A": "1"}
    )
    argv = bwrap_argv(spec, ["serve", "x"])
    joined = " ".join(argv)
    for flag in ("--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert "--setenv" not in argv  # the environment (a token) never goes on a command line
    assert "--ro-bind /etc /etc" not in joined  # only chosen entries of the host's /etc
    assert "--ro-bind-try /etc/passwd /etc/passwd" in joined
    assert "/etc/shadow" not in joined
    assert "--unshare-net" not in argv  # the network namespace is the launcher's, with its firewall
    assert "--cap-drop ALL --cap-add CAP_SETUID --cap-add CAP_SETGID" in joined
    assert argv[-9:] == [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
        "--", "serve", "x",
    ]  # fmt: skip
    assert f"--ro-bind {model} {model}" in joined
    assert str(tmp_path / "missing") not in joined
    assert f"--perms 0755 --dir {model.parent}" in joined  # parents the unprivileged user can enter
    assert joined.index("--tmpfs /tmp") < joined.index(f"--ro-bind {model}")  # a model under /tmp stays visible
    assert "--bind" in argv
    assert "--ro-bind / /" not in joined
    assert "--bind / /" not in joined


def test_a_model_the_sandbox_user_cannot_read_is_found(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    secret = tmp_path / "m" / "w.wvlt"
    secret.write_bytes(b"x")
    secret.chmod(0o600)
    (tmp_path / "m").chmod(0o755)
    assert secret == unreadable(tmp_path / "m", 65534, [65534])
    secret.chmod(0o644)
    assert unreadable(tmp_path / "m", 65534, [65534]) is None


def test_publish_syntax(tmp_path: Path) -> None:
    assert 8000 == parse_publish(f"{tmp_path}/s.sock=8000").port
    for bad in ("8000", "=8000", f"{tmp_path}/s.sock=0", f"{tmp_path}/s.sock=http"):
        with pytest.raises(ConfigError):
            parse_publish(bad)


def test_without_root_the_sandbox_refuses_and_names_the_only_way_round(monkeypatch: pytest.MonkeyPatch) -> None:
    from weightvault.errors import IsolationError
    from weightvault.sandbox import launcher

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(IsolationError, match="needs root") as caught:
        launcher.preflight()
    assert "--unsafe-no-isolation" in caught.value.diagnostics()
