"""``weightvault sentinel``: detect theft and extraction in the audit log, contain it, measure it.

``run`` follows a live log (a broker's tiles API, or a local log database) and contains
through the broker's API; ``scan`` replays a JSON Lines export; ``simulate`` and ``eval``
make and score labelled scenarios; ``alerts``, ``holds``, ``hold`` and ``lift`` are the
operators' side (docs/sentinel.md).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from weightvault.cli.options import (
    client_options,
    http_fetch,
    json_option,
    make_client,
    open_reader,
    read_policy,
    read_token,
    read_vkey,
    report,
)
from weightvault.errors import ConfigError, RuleError
from weightvault.files import atomic_file, read_text_file

__all__ = ["sentinel"]


def _config(config_path: Path | None, rules: tuple[Path, ...], learned: bool) -> tuple[Any, dict[str, Any]]:
    """The engine configuration and the raw sentinel configuration (with its containment section)."""
    import yaml

    from weightvault.sentinel.engine import config_from, packaged

    doc: dict[str, Any] = yaml.safe_load(packaged("baselines.yaml"))
    doc["containment"] = yaml.safe_load(packaged("containment.yaml"))
    if config_path is not None:
        try:
            user = yaml.safe_load(read_text_file(config_path, "sentinel configuration")) or {}
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            raise RuleError(f"{config_path}: not YAML ({type(exc).__name__})") from exc
        if not isinstance(user, dict) or set(user) - {
            "baselines",
            "cusums",
            "learned",
            "prada",
            "swarm",
            "containment",
        }:
            raise RuleError(f"{config_path}: keys are baselines, cusums, learned, prada, swarm and containment")
        doc.update(user)
    base = packaged("rules.yaml")
    extra = [read_text_file(p, "rule file") for p in rules]
    return config_from(base, doc, extra_rules=extra, learned=learned), doc


def _config_options(func: Any) -> Any:
    func = click.option("--no-learned", is_flag=True, help="Run without the learned model.")(func)
    func = click.option(
        "--rules",
        "rules",
        multiple=True,
        type=click.Path(path_type=Path, exists=True),
        help="More rules, added to the packaged ones (repeatable; docs/sentinel.md).",
    )(func)
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, exists=True),
        help="A sentinel.yaml: baselines, learned model, containment (docs/sentinel.md).",
    )(func)


@click.group()
def sentinel() -> None:
    """Detect weight theft and extraction in the audit log, and contain it through the broker."""


@sentinel.command("scan")
@click.option("--events", "events_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--alerts-out", type=click.Path(path_type=Path), required=True, help="Alerts, one JSON per line.")
@click.option(
    "--jobs",
    type=int,
    default=1,
    show_default=True,
    help="Processes: tenants are split among them (the learned model then trains per process).",
)
@click.option("--force", is_flag=True, help="Replace existing outputs.")
@json_option
@_config_options
def sentinel_scan(
    events_path: Path,
    alerts_out: Path,
    jobs: int,
    force: bool,
    as_json: bool,
    config_path: Path | None,
    rules: tuple[Path, ...],
    no_learned: bool,
) -> None:
    """Replay a JSON Lines export as a live stream would arrive; write the alerts.

    Each alert is decided from the events up to its own time only. Malformed lines,
    unknown event types, late events and gaps are counted and reported, never fatal.
    """
    from weightvault.sentinel.parallel import scan_file

    config, _ = _config(config_path, rules, not no_learned)
    if jobs < 1:
        raise ConfigError("--jobs is at least 1")
    _prepare()
    started = time.perf_counter()
    alerts, c = scan_file(events_path, config, jobs=jobs, prepare=_prepare)
    elapsed = time.perf_counter() - started
    with atomic_file(alerts_out, overwrite=force) as out:
        for alert in alerts:
            out.write(json.dumps(alert, sort_keys=True).encode() + b"\n")
    count = c.events + c.bad_event
    lines = [
        f"{count} events in {elapsed:.1f} s ({count / max(elapsed, 1e-9):,.0f}/s, {jobs} process"
        f"{'es' if jobs > 1 else ''}): {len(alerts)} alerts "
        f"({', '.join(f'{k} {v}' for k, v in sorted(c.by_detector.items())) or 'none'}), {c.suppressed} suppressed",
        f"input: {c.bad_event} malformed, {c.unknown_type} of unknown type, {c.late} late, "
        f"{c.clock_jump} clock jumps, {c.index_gap} index gaps, {c.index_reorder} out of order, "
        f"{c.planted_text} with planted text, {c.dangling_refs} refs to entries not in the file",
    ]
    doc = {"alerts": len(alerts), "alerts_file": alerts_out, "seconds": round(elapsed, 3), "jobs": jobs}
    report(as_json, lines, doc | {"counters": dataclasses.asdict(c)})


def _prepare() -> None:
    """Import the learned model's libraries once (before worker processes fork, and outside any timing)."""
    import scipy.stats  # noqa: F401
    import sklearn.ensemble  # noqa: F401


@sentinel.command("simulate")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Directory for the files.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--days", type=int, default=28, show_default=True)
@click.option("--profile", type=click.Choice(["tune", "holdout"]), default="tune", show_default=True)
@click.option("--force", is_flag=True, help="Replace existing files.")
@json_option
def sentinel_simulate(out_dir: Path, seed: int, days: int, profile: str, force: bool, as_json: bool) -> None:
    """Write a seeded scenario: OUT/events.jsonl and OUT/labels.jsonl (docs/sentinel.md)."""
    from weightvault.sentinel.simulate import simulate

    try:
        scenario = simulate(seed, days=days, profile=profile)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "events.jsonl", overwrite=force) as handle:
        handle.write(scenario.events_jsonl().encode())
    with atomic_file(out_dir / "labels.jsonl", overwrite=force) as handle:
        handle.write(scenario.labels_jsonl().encode())
    text = f"wrote {len(scenario.events)} events and {len(scenario.labels)} incidents to {out_dir}"
    doc = {"events": len(scenario.events), "incidents": len(scenario.labels), "directory": out_dir}
    report(as_json, text, doc | {"seed": seed, "days": days, "profile": profile})


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        yield from handle


@sentinel.command("eval")
@click.option("--events", "events_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--labels", "labels_path", type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--alerts", "alerts_path", type=click.Path(path_type=Path, exists=True), help="Alerts to score.")
@click.option("--grace", type=int, default=3600, show_default=True, help="Seconds after an incident that still count.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_config_options
def sentinel_eval(
    events_path: Path,
    labels_path: Path,
    alerts_path: Path | None,
    grace: int,
    as_json: bool,
    config_path: Path | None,
    rules: tuple[Path, ...],
    no_learned: bool,
) -> None:
    """Score alerts against labelled incidents: recall, false alerts per 1,000 benign entity-days,
    precision and time to detect, overall and per family (scans EVENTS first without --alerts)."""
    from weightvault.sentinel.evaluate import benign_entity_days, evaluate, parse_alerts, parse_labels
    from weightvault.sentinel.parallel import scan_file

    incidents, bad_labels = parse_labels(_lines(labels_path))
    if alerts_path is not None:
        alerts, bad_alerts = parse_alerts(_lines(alerts_path))
    else:
        config, _ = _config(config_path, rules, not no_learned)
        alerts, bad_alerts = scan_file(events_path, config)[0], 0
    days, bad_events = benign_entity_days(_lines(events_path), incidents)
    report = evaluate(
        alerts,
        incidents,
        days,
        grace_ms=grace * 1000,
        bad_lines={"labels": bad_labels, "alerts": bad_alerts, "events": bad_events},
    ).to_json()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{events_path.name}: {report['incidents']} incidents, {report['alerts']} alerts")
    for column in ("family", "incidents", "detected", "recall", "false alerts", "TTD p50 s", "TTD p90 s"):
        table.add_column(column, justify="left" if column == "family" else "right")
    for family, row in report["families"].items():
        table.add_row(
            family,
            str(row["incidents"]),
            str(row["detected"]),
            "-" if row["recall"] is None else f"{row['recall']:.2f}",
            str(row["false_alerts"]),
            "-" if row["ttd_p50_s"] is None else str(row["ttd_p50_s"]),
            "-" if row["ttd_p90_s"] is None else str(row["ttd_p90_s"]),
        )
    Console().print(table)
    click.echo(
        f"recall {report['recall']}, precision {report['precision']}, {report['false_alerts']} false alerts over "
        f"{report['benign_entity_days']} benign entity-days = {report['false_alerts_per_1000_entity_days']} per 1,000"
    )
    if report["missed"]:
        click.echo("missed: " + ", ".join(report["missed"]))


@sentinel.command("rules")
@click.option("--check", "check", type=click.Path(path_type=Path, exists=True), multiple=True, help="A rule file.")
@json_option
def sentinel_rules(check: tuple[Path, ...], as_json: bool) -> None:
    """List the packaged rules, with any --check files compiled after them (errors exit 62)."""
    from weightvault.sentinel.engine import packaged
    from weightvault.sentinel.rules import load_rules

    ruleset = load_rules(packaged("rules.yaml"), [read_text_file(p, "rule file") for p in check])
    lines = [f"{rule.id:<32} {rule.family:<22} {rule.severity:<9} {rule.title}" for rule in ruleset.rules]
    lines.append(f"{len(ruleset.rules)} rules, {len(ruleset.watchlists)} watchlists ({ruleset.source_digest})")
    doc = {
        "rules": [{"id": r.id, "family": r.family, "severity": r.severity, "title": r.title} for r in ruleset.rules],
        "watchlists": sorted(w.name for w in ruleset.watchlists),
        "source_digest": ruleset.source_digest,
    }
    report(as_json, lines, doc)


@sentinel.command("run")
@client_options
@click.option("--db", help="Follow a log database (a SQLite file, or postgresql://...) instead of --broker.")
@click.option("--log-key", required=True, help="The log's verifier key (vkey text or file).")
@click.option("--policy", "policy_file", type=click.Path(path_type=Path), help="A tlog-policy file (witnesses).")
@click.option("--witness", "witnesses", multiple=True, help="A witness vkey (text or file). Repeatable.")
@click.option("--quorum", type=int, default=1, show_default=True, help="Cosignatures needed from --witness keys.")
@click.option("--state", type=click.Path(path_type=Path), help="The sentinel's state file (survives restarts).")
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between polls.")
@click.option("--max-quiet", type=float, default=3600.0, show_default=True, help="Alert when the log is this quiet.")
@click.option("--once", is_flag=True, help="Poll once and exit (for cron and tests).")
@click.option("--no-contain", is_flag=True, help="Record alerts, place no holds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: each alert, then the summary.")
@_config_options
def sentinel_run(
    url: str | None,
    token: str | None,
    ca: Path | None,
    db: str | None,
    log_key: str,
    policy_file: Path | None,
    witnesses: tuple[str, ...],
    quorum: int,
    state: Path | None,
    interval: float,
    max_quiet: float,
    once: bool,
    no_contain: bool,
    as_json: bool,
    config_path: Path | None,
    rules: tuple[Path, ...],
    no_learned: bool,
) -> None:
    """Follow the live log, verifying every checkpoint; record alerts and contain through the broker.

    Needs a principal of role sentinel (weightvault admin principal ID --role sentinel):
    it reads the log's tiles, records sentinel.alert events and places holds, nothing else.
    """
    from weightvault.auditlog.follower import TileFollower
    from weightvault.auditlog.tiles import tile_resource
    from weightvault.sentinel.engine import Sentinel
    from weightvault.sentinel.live import ContainmentPolicy, LiveSentinel

    config, doc = _config(config_path, rules, not no_learned)
    policy = ContainmentPolicy.parse(None if no_contain else doc.get("containment"))
    verifier = read_vkey(log_key)
    witness_policy = read_policy(policy_file, witnesses, quorum)
    client = make_client(url, token, ca)
    reader = None
    http_client = None
    fetch: Callable[[str], bytes | None]
    if db is not None:
        reader = open_reader(db)
        local = reader

        def fetch_local(path: str) -> bytes | None:
            status, body, _ = tile_resource(local, path)
            return body if status == 200 else None

        fetch = fetch_local
    else:
        http_client, fetch = http_fetch(client.url + "/v1/audit", read_token(token), ca)

    def show(alert: Any, index: int | None) -> None:
        if as_json:
            fields = {"severity": alert.severity, "family": alert.family, "rule": alert.rule, "summary": alert.summary}
            click.echo(json.dumps({"alert": fields, "index": index}, sort_keys=True))
            return
        where = f"entry {index}" if index is not None else "not recorded"
        click.echo(f"ALERT {alert.severity} {alert.family} {alert.rule} ({where}): {alert.summary}")

    follower = TileFollower(fetch, verifier, witness_policy, clock=time.time)
    live = LiveSentinel(
        Sentinel(config), follower, client, policy, state_path=state, max_quiet_s=max_quiet, on_alert=show
    )
    live.load_state()
    try:
        while True:
            live.poll()
            if once:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        live.save_state()
        client.close()
        if http_client is not None:
            http_client.close()
        if reader is not None:
            reader.close()
    c = live.counters
    e2a = statistics.median(c.event_to_alert_s) if c.event_to_alert_s else None
    a2h = statistics.median(c.alert_to_hold_s) if c.alert_to_hold_s else None
    if as_json:
        counts = {k: v for k, v in dataclasses.asdict(c).items() if not isinstance(v, list)}
        summary = counts | {"event_to_alert_p50_s": e2a, "alert_to_hold_p50_s": a2h}
        click.echo(json.dumps({"summary": summary}, sort_keys=True))
        return
    click.echo(
        f"{c.entries} entries, {c.alerts_posted} alerts recorded, {c.holds} holds placed "
        f"({c.hold_refused} refused), {c.verify_failures} verification failures; "
        f"event to alert p50 {e2a if e2a is None else round(e2a, 3)} s, alert to hold p50 "
        f"{a2h if a2h is None else round(a2h, 3)} s"
    )


def _print_rows(rows: list[dict[str, Any]], as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
        return
    for row in rows:
        click.echo("  ".join(str(row.get(c, "")) for c in columns))


@sentinel.command("alerts")
@client_options
@click.option("--tenant", help="Only this tenant's alerts.")
@click.option("--since-index", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def sentinel_alerts(
    url: str | None, token: str | None, ca: Path | None, tenant: str | None, since_index: int, as_json: bool
) -> None:
    """List sentinel.alert events from the broker's log."""
    with make_client(url, token, ca) as client:
        rows = client.sentinel_alerts(tenant, since_index)
    if as_json:
        _print_rows(rows, True, ())
        return
    for row in rows:
        d = row.get("details", {})
        click.echo(
            f"{row['index']:>8} {row['tenant']:<12} {d.get('severity', ''):<8} {d.get('family', ''):<20} "
            f"{d.get('rule', ''):<28} {', '.join(d.get('actors', []) + d.get('keys', []) + d.get('devices', []))}"
        )


@sentinel.command("holds")
@client_options
@click.option("--tenant", help="Only this tenant's holds.")
@click.option("--all", "include_lifted", is_flag=True, help="Include lifted holds.")
@click.option("--json", "as_json", is_flag=True)
def sentinel_holds(
    url: str | None, token: str | None, ca: Path | None, tenant: str | None, include_lifted: bool, as_json: bool
) -> None:
    """List containment holds."""
    with make_client(url, token, ca) as client:
        rows = client.holds(tenant, include_lifted=include_lifted)
    _print_rows(rows, as_json, ("id", "kind", "target", "tenant", "rule", "alert_index", "created_by", "lifted_by"))


@sentinel.command("hold")
@client_options
@click.argument("kind", type=click.Choice(["principal", "gateway_key", "device", "model"]))
@click.argument("target")
@click.option("--rule", required=True, help="Why (recorded with the hold).")
@click.option("--alert-index", type=int, help="The sentinel.alert this hold answers.")
@json_option
def sentinel_hold(
    url: str | None,
    token: str | None,
    ca: Path | None,
    kind: str,
    target: str,
    rule: str,
    alert_index: int | None,
    as_json: bool,
) -> None:
    """Place a containment hold by hand (operators)."""
    with make_client(url, token, ca) as client:
        hold_id = client.hold(kind, target, rule=rule, alert_index=alert_index)
    report(as_json, hold_id, {"hold": hold_id, "kind": kind, "target": target, "rule": rule})


@sentinel.command("lift")
@client_options
@click.argument("hold_id")
@json_option
def sentinel_lift(url: str | None, token: str | None, ca: Path | None, hold_id: str, as_json: bool) -> None:
    """Lift a containment hold (operators only; audited)."""
    with make_client(url, token, ca) as client:
        client.lift(hold_id)
    report(as_json, f"lifted {hold_id}", {"hold": hold_id, "lifted": True})
