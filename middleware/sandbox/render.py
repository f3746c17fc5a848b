"""Rich rendering of a running scenario: one panel per step with what careloop saw.

Only ids, types, statuses, subscription ids and header *names* are shown (never resource
bodies, names or header values), so the output is safe to paste into an issue.
"""
from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .journeys import Journey, Step
from .scenarios import Observed

Json = dict[str, Any]
SHOWN_HEADERS = ("authorization", "x-careloop-subscription", "user-agent", "content-type")


def _since(items: list[Json], floor: int) -> list[Json]:
    return [i for i in items if i["id"] > floor]


def step_table(step: Step, obs: Observed, floors: dict[str, int], ceil: dict[str, int] | None = None) -> Table:
    """Rows for one step: notifications and events that arrived during it, the triggers it
    created or expects to fire/cancel (latest status), and the sink calls for those."""
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    top = ceil or {}

    def within(items: list[Json], name: str) -> list[Json]:
        return [i for i in _since(items, floors[name]) if name not in top or i["id"] <= top[name]]

    for m in within(obs.notifications, "messages"):
        meta = m.get("meta") or {}
        names = [h for h in meta.get("header_names", []) if h in SHOWN_HEADERS]
        t.add_row("notification", Text(
            f"{meta.get('method')} {meta.get('path')}  v{meta.get('version') or '-'}  subscription="
            f"{meta.get('subscription') or '?'}  client={meta.get('client') or '?'}  headers: {', '.join(names)}"
            f"  -> {m.get('status')}"))
    for e in within(obs.events, "events"):
        t.add_row("event", Text(f"{e['type']}  ({e.get('previous_status') or 'none'} -> {e.get('status')})  "
                                f"arrival={e.get('arrival')}"))
    wanted = set(step.fired) | set(step.cancelled)
    created = {tr["id"] for tr in within(obs.triggers, "triggers")}
    shown = [tr for tr in obs.triggers if tr["id"] in created or tr["rule_id"] in wanted]
    for tr in shown:
        t.add_row("trigger", Text(f"{tr['rule_id']}  {tr['status']}  due {tr.get('due_at') or '-'}  "
                                  f"{(tr.get('reason') or '')[:90]}"))
    ids = {tr["id"] for tr in shown if tr["status"] == "fired"}
    for r in obs.sink:
        if r.get("trigger_id") in ids:
            t.add_row("sink", Text(f"{r.get('type')}  trigger {r.get('trigger_id')}  "
                                   f"signature {'verified' if r.get('verified') else 'NOT verified'}"))
    return t


def step_panel(i: int, step: Step, obs: Observed, floors: dict[str, int], missing: list[str] | None,
               done: bool, ceil: dict[str, int] | None = None) -> Panel:
    """One step; ``floors``/``ceil``: operator-API ids before this step and before the next."""
    body: list[RenderableType] = [step_table(step, obs, floors, ceil)]
    if step.note:
        body.append(Text(f"sped up: {step.note}", style="yellow"))
    if missing:
        label = "still missing: " if done else "waiting for: "
        if done:
            body.append(Text(label + "; ".join(missing), style="bold red"))
        else:
            body.append(Spinner("dots", text=Text(label + "; ".join(missing), style="cyan")))
    title_style = "green" if done and not missing else ("red" if done else "cyan")
    mark = "✔" if done and not missing else ("✘" if done else "…")
    return Panel(Group(*body), title=Text(f"{mark} step {i + 1}: {step.title}", style=title_style),
                 title_align="left")


def header(journey: Journey, fhir_base: str, careloop_url: str, mode: str) -> Panel:
    return Panel(Text(
        f"{journey.name}: {journey.description}\n"
        f"patient Patient/{journey.patient['id']} (synthetic)   HAPI {fhir_base}   careloop {careloop_url} ({mode})"),
        title="careloop sandbox scenario", title_align="left")
