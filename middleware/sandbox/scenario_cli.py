"""The body of ``careloop sandbox scenario``: find or start careloop, point HAPI at it, run the
journeys with a live display, say what was sped up. Returns the process exit code."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from . import journeys, outcomes_scenario, scenarios
from .hooks import HookError
from .local import CareloopApi, CareloopError, LocalCareloop, is_careloop, port_free
from .render import header, step_panel

Json = dict[str, Any]


def _sink_reader(url: str) -> Any:
    def read() -> list[Json]:
        r = httpx.get(url.rstrip("/") + "/received", timeout=10)
        r.raise_for_status()
        out: list[Json] = r.json()
        return out
    return read


def run_scenarios(names: list[str], *, fhir_base: str, careloop_url: str, port: int, token: str, database_url: str,
                  api_token: str | None, sink_url: str | None, workdir: Path, step_deadline_s: float = 60.0,
                  console: Console | None = None, patients: int = 200, seed: int = 14) -> int:
    con = console or Console()
    local: LocalCareloop | None = None
    outcomes_tag = scenarios.new_tag()  # the outcomes scenario's run: its rule, goal and patients
    if is_careloop(careloop_url):
        mode = "running careloop, rules as configured"
        api = CareloopApi(careloop_url, api_token)
        sink = _sink_reader(sink_url) if sink_url else None
        con.print(f"[bold]using the careloop at {careloop_url}[/]; its rules are not sped up, so triggers that "
                  "wait hours or days are reported as scheduled (pending), not watched until they fire"
                  + ("" if sink else "; no --sink-url given, so delivery is read from /api/deliveries"))
    else:
        if not port_free(port):
            con.print(f"[red]port {port} is busy but does not answer as careloop; pass --careloop-url[/]")
            return 2
        try:
            with con.status(f"starting careloop on {careloop_url} with a local webhook sink…"):
                local = LocalCareloop.start(fhir_base=fhir_base, workdir=workdir, token=token, port=port,
                                            database_url=database_url,
                                            extra_rules=outcomes_scenario.extra_rules(outcomes_tag) if "outcomes" in names else None)
        except CareloopError as exc:
            con.print(f"[red]{exc}[/]")
            return 1
        mode = "started here, demo timings"
        api, sink = CareloopApi(local.url), local.sink.received
    try:
        with httpx.Client(base_url=fhir_base + "/", timeout=30) as client, \
                con.status("pointing HAPI's subscriptions at careloop and waiting until HAPI delivers…"):
            try:
                scenarios.prepare(client, api, careloop_url + "/fhir/default", token)
            except (HookError, httpx.HTTPError) as exc:
                con.print(f"[red]HAPI does not reach careloop: {exc}[/] (is `careloop sandbox up` done?)")
                return 1
        failed = 0
        for name in names:
            if name in journeys.BULK:
                failed += 0 if _run_outcomes(con, fhir_base, api, outcomes_tag, patients, seed, step_deadline_s,
                                             local) else 1
                continue
            failed += 0 if _run_one(con, name, fhir_base, careloop_url, mode, api, sink, step_deadline_s,
                                    pending_ok=local is None) else 1
        if local is not None and local.speedups:
            con.print(Panel(Text("\n".join(
                f"{s.where}: {s.what} {s.real} -> {s.demo}" for s in local.speedups)
                + ("\nadded for the outcomes scenario: rules/" + outcomes_scenario.RULE_FILE + " (rule "
                   + outcomes_scenario.RULE_ID + ", goal " + outcomes_scenario.goal_id(outcomes_tag) + ", 50% holdout)"
                   if "outcomes" in names else "")
                + "\nOnly this demo careloop's copy of the mappings was changed (in " + str(local.mappings_dir)
                + "); mappings/ is untouched and `careloop serve` uses the real waits."),
                title="sped up for the demo", title_align="left", border_style="yellow"))
        return 1 if failed else 0
    finally:
        if local is not None:
            local.stop()


def _run_one(con: Console, name: str, fhir_base: str, careloop_url: str, mode: str, api: CareloopApi,
             sink: Any, step_deadline_s: float, pending_ok: bool) -> bool:
    journey = scenarios.build(name)
    panels: dict[int, Any] = {}

    def view() -> Group:
        return Group(header(journey, fhir_base, careloop_url, mode), *[panels[k] for k in sorted(panels)])

    with Live(view(), console=con, refresh_per_second=8, transient=False) as live:
        def update(i: int, step: Any, obs: scenarios.Observed, left: list[str], floors: dict[str, int]) -> None:
            for k in range(i):  # earlier steps: final view with the latest statuses
                panels[k] = step_panel(k, journey.steps[k], obs, report_floors[k], [], True, report_floors.get(k + 1, floors))
            report_floors[i] = floors
            panels[i] = step_panel(i, step, obs, floors, left, False)
            live.update(view())

        report_floors: dict[int, dict[str, int]] = {}
        report = scenarios.run(journey, fhir_base, api, sink=sink, on_update=update,
                               step_deadline_s=step_deadline_s, pending_ok=pending_ok)
        last = report.steps[-1].observed if report.steps else scenarios.Observed()
        for k, s in enumerate(report.steps):
            ceil = report.steps[k + 1].since if k + 1 < len(report.steps) else None
            panels[k] = step_panel(k, s.step, last, s.since, s.missing, True, ceil)
        live.update(view())
    con.print()
    if report.ok:
        total = sum(s.seconds for s in report.steps)
        con.print(f"[green]✔ {name}: every step confirmed end to end in {total:.1f}s[/]")
    else:
        con.print(f"[red]✘ {name}: stopped at step {len(report.steps)}[/]")
    return report.ok


def _run_outcomes(con: Console, fhir_base: str, api: CareloopApi, tag: str, patients: int, seed: int,
                  step_deadline_s: float, local: LocalCareloop | None) -> bool:
    """The ``outcomes`` scenario (outcomes_scenario.py) with a progress line and a pass/fail table."""
    from rich.table import Table

    if local is None:  # its rule is per run (tag in where, goal and experiment): only a careloop started here has it
        con.print("[red]✘ outcomes: needs the careloop this command starts (its sandbox rule is made per run); "
                  "the careloop already answering --careloop-url does not have it. Stop it or pass another "
                  "--careloop-url port.[/]")
        return False
    con.print(f"[bold]outcomes[/]: {patients} synthetic patients, seed {seed}, rule {outcomes_scenario.RULE_ID} "
              f"(goal {outcomes_scenario.goal_id(tag)}, 50% holdout), rebooking probability "
              + ", ".join(f"{k} {v:.0%}" for k, v in outcomes_scenario.P_REBOOK.items()))
    deadline = max(step_deadline_s, 60.0 + 0.5 * patients)
    try:
        with con.status("writing to HAPI…") as status:
            out = outcomes_scenario.run(fhir_base, api, tag, n=patients, seed=seed, phase_deadline_s=deadline,
                                        progress=lambda msg: status.update(msg),
                                        close_windows=local.close_windows if local is not None else None)
    except (outcomes_scenario.ScenarioError, httpx.HTTPError) as exc:
        con.print(f"[red]✘ outcomes: {exc}[/]")
        return False
    table = Table(title=f"outcome report for {outcomes_scenario.goal_id(tag)} vs ground truth", title_justify="left")
    for col in ("windows", "arm", "count", "ground truth", "careloop report", ""):
        table.add_column(col, justify="left" if col in ("windows", "arm", "count") else "right")
    for r in out.rows:
        table.add_row(r.windows, r.arm, r.what, str(r.truth), "-" if r.report is None else str(r.report),
                      "[green]✔[/]" if r.ok else "[red]✘[/]")
    con.print(table)
    con.print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in out.seconds.items()) + "; "
              + ("windows closed as of 15 days later in this demo careloop's database (what its every-minute "
                 "window check does once they have run out)" if local is not None else
                 "the entries not rebooked stay pending until their 14-day window closes (a running careloop "
                 "is not fast-forwarded)"))
    if out.ok:
        con.print(f"[green]✔ outcomes: the report equals the ground truth ({len(out.rebooked)} of {patients} "
                  "patients rebooked)[/]")
    else:
        con.print("[red]✘ outcomes: the report differs from the ground truth[/]")
    return out.ok
