"""The console's HTML: the front page, a cycle's card and an error page, rendered on the server.

Each page is one self-contained document: inline CSS, inline SVG charts, no script, nothing fetched (a Content
Security Policy in the page says so to the browser as well). Every string that comes from the database passes
through :func:`html.escape` (``_e``) before it reaches the markup.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any

from agent.console import svg
from agent.console.signals import Series
from agent.console.view import ConsoleView, CycleCard, Evidence
from agent.store import Cycle, DecisionRecord

__all__ = ["CSP", "render_console", "render_cycle", "render_error"]

# Nothing but the page itself: inline styles and data: images; no scripts, no fetches, no frames, no forms.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

_CSS = """
:root{--fg:#1b1f24;--muted:#5b6570;--line:#d7dce1;--bg:#fff;--panel:#f6f8fa;--ok:#1a7f37;--bad:#cf222e;
--hold:#9a6700;--run:#0969da}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg);margin:0}header{background:#24292f;color:#fff;padding:10px 20px;display:flex;gap:18px;
align-items:baseline}header a{color:#fff;text-decoration:none;font-weight:600}header .sub{color:#c9d1d9;font-size:12px}
main{padding:16px 20px;max-width:1100px}h1{font-size:22px;margin:4px 0 12px}h2{font-size:16px;margin:22px 0 8px;
border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:14px;margin:14px 0 6px}
.panel{background:var(--panel);border:1px solid var(--line);border-radius:6px;padding:10px 14px;margin:8px 0}
.champion{display:flex;gap:30px;flex-wrap:wrap;align-items:baseline}.big{font-size:24px;font-weight:700}
.muted{color:var(--muted)}.empty{color:var(--muted);font-style:italic}
table{border-collapse:collapse;margin:6px 0;width:100%}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid var(--line);vertical-align:top}th{font-weight:600;background:var(--panel)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
background:var(--muted)}.b-promoted,.b-promote,.b-fired,.b-keep,.b-pass{background:var(--ok)}
.b-rejected,.b-reject,.b-failed,.b-suppressed,.b-rollback,.b-fail{background:var(--bad)}
.b-held,.b-hold,.b-overridden{background:var(--hold)}.b-run,.b-propose,.b-train,.b-validate,.b-plan,.b-observe,
.b-promote-state{background:var(--run)}.b-note{background:#6e7781}
.chip{display:inline-block;border:1px solid var(--line);border-radius:10px;padding:0 8px;margin:0 4px 2px 0;
font-size:12px;background:#fff}ul.reasons{list-style:none;padding:0;margin:4px 0}ul.reasons li{margin:2px 0}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}pre{background:#fff;border:1px solid var(--line);
padding:8px;overflow:auto;max-height:320px}dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;
margin:6px 0}dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
svg.chart{width:100%;height:auto;max-width:960px;background:#fff;border:1px solid var(--line);border-radius:4px}
svg .axis{stroke:#57606a;stroke-width:1}svg .grid{stroke:#eaeef2;stroke-width:1}
svg text{font:10px system-ui,sans-serif;fill:#57606a}svg .title{font-weight:600}
svg .series{fill:none;stroke-width:1.8}svg .bar{fill:#0072b2;opacity:.8}svg .band{fill:#1a7f37;opacity:.12}
svg .bandlabel{fill:#1a7f37;font-weight:600}svg .marker{stroke-width:1.6;stroke-dasharray:4 3}
svg .m0{stroke:#57606a;fill:#57606a}svg .m1{stroke:#d55e00;fill:#d55e00}svg .m2{stroke:#1a7f37;fill:#1a7f37}
svg .lane{font-weight:600;fill:#1b1f24;font-size:11px}svg .span{stroke:#fff;stroke-width:1}
svg .spanlabel{fill:#fff;font-weight:600}svg .serve{fill:#0072b2}svg .serve-rollback{fill:#cc79a7}
svg .promoted{fill:#1a7f37}svg .rejected,svg .failed{fill:#cf222e}svg .held{fill:#9a6700}svg .running{fill:#0969da}
svg .event{stroke:#fff;stroke-width:1}svg .promote{fill:#1a7f37}svg .rollback{fill:#cf222e}svg .canary{fill:#e69f00}
svg .bootstrap{fill:#57606a}.legend span{margin-right:14px;font-size:12px}.sw{display:inline-block;width:10px;
height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:12px}@media (max-width:800px){.grid2{grid-template-columns:1fr}}
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(start: datetime, end: datetime | None, now: datetime) -> str:
    seconds = max(((end or now) - start).total_seconds(), 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _num(value: float | None, fmt: str = ".4g", signed: bool = False) -> str:
    if value is None:
        return "—"
    return format(value, ("+" if signed else "") + fmt)


def _badge(text: object, css: str | None = None) -> str:
    label = str(text)
    return f'<span class="badge b-{_e(css or label.lower())}">{_e(label)}</span>'


def _state_badge(cycle: Cycle) -> str:
    state = str(cycle.state)
    css = "promote-state" if state == "promote" else state
    return _badge(state, css)


def _page(title: str, body: str, *, now: datetime, standalone: bool) -> str:
    nav = (
        '<span class="sub">cycle report (a file written when the cycle finished; live at /console)</span>'
        if standalone
        else '<a href="/console">qtha console</a><span class="sub">read-only · reads the daemon\'s database</span>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header>{nav}<span class="sub">rendered {_e(_when(now))}</span></header>'
        f"<main>{body}</main></body></html>\n"
    )


def _reasons(reasons: Sequence[Any]) -> str:
    if not reasons:
        return '<p class="empty">no reasons recorded</p>'
    items = []
    for reason in reasons:
        if isinstance(reason, Mapping):
            items.append(
                f"<li>{_badge(reason.get('kind', 'note'))} <code>{_e(reason.get('code', ''))}</code> "
                f"{_e(reason.get('message', ''))}</li>"
            )
        else:
            items.append(f"<li>{_e(reason)}</li>")
    return '<ul class="reasons">' + "".join(items) + "</ul>"


def _kv_table(data: Mapping[str, Any], *, skip: Iterable[str] = ()) -> str:
    skipped = set(skip)
    rows = [
        f"<tr><th>{_e(k)}</th><td><code>{_e(_plain(v))}</code></td></tr>"
        for k, v in sorted(data.items())
        if k not in skipped and v not in (None, "")
    ]
    return "<table>" + "".join(rows) + "</table>" if rows else '<p class="empty">nothing recorded</p>'


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".6g")
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


# -- the front page ---------------------------------------------------------------------------------------------------
def render_console(view: ConsoleView) -> str:
    """The front page: champion and lineage, timeline, live signals per version, cycles, versions, serving."""
    body = [
        "<h1>What the daemon did, and why</h1>",
        _champion_panel(view),
        "<h2>Timeline</h2>",
        _timeline(view),
        "<h2>Live signals per version</h2>",
        _signals(view.series),
        "<h2>Cycles</h2>",
        _cycle_table(view),
        "<h2>Versions</h2>",
        _versions_table(view),
        "<h2>Serving history</h2>",
        _serving_table(view),
    ]
    return _page("qtha console", "".join(body), now=view.now, standalone=False)


def _champion_panel(view: ConsoleView) -> str:
    champ = view.champion
    version = view.champion_version
    metrics = version.numeric_metrics() if version else {}
    shown = ", ".join(f"{k} {_num(v)}" for k, v in sorted(metrics.items()) if k.startswith("eval_"))
    lineage = " ← ".join(f"<code>{_e(v)}</code>" for v in view.lineage)
    status = view.daemon_status or {}
    parts = [
        '<div class="panel champion" id="champion">',
        f'<div><div class="muted">champion</div><div class="big">{_e(champ.version_id or "base model")}</div></div>',
        f'<div><div class="muted">epoch</div><div>{champ.epoch}{" · pinned" if champ.pinned else ""}</div></div>',
        f'<div><div class="muted">lineage</div><div>{lineage}</div></div>',
    ]
    if shown:
        parts.append(f'<div><div class="muted">held-out metrics</div><div>{_e(shown)}</div></div>')
    if status:
        parts.append(
            f'<div><div class="muted">daemon ({_e(status.get("replica", "?"))})</div>'
            f"<div>{_e(status.get('status', ''))}</div></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def _timeline(view: ConsoleView) -> str:
    rollback_epochs = {e.epoch for e in view.serve_entries if e.details.get("rollback")}
    bars = [
        svg.Bar(
            "serving",
            s.served_from,
            s.served_until,
            s.version_id,
            "serve-rollback" if s.epoch in rollback_epochs else "serve",
            tip=f"{s.version_id} served {_when(s.served_from)} → {_when(s.served_until) if s.served_until else 'now'}"
            f" ({s.moved_by}: {s.reason})",
        )
        for s in view.serving
    ]
    for cycle in view.cycles:
        css = str(cycle.state) if cycle.state.terminal else "running"
        bars.append(
            svg.Bar(
                "cycles",
                cycle.started_at,
                cycle.finished_at,
                f"#{cycle.id}",
                css,
                href=f"/console/cycles/{cycle.id}",
                tip=f"cycle {cycle.id} {cycle.state}: {cycle.outcome or cycle.error or ''}",
            )
        )
    markers = [
        svg.Marker(
            "serving",
            e.at,
            f"{'rollback' if e.epoch in rollback_epochs else 'promotion'} to {e.version_id} by {e.actor}: {e.reason}",
            "rollback" if e.epoch in rollback_epochs else "promote",
        )
        for e in view.serve_entries
    ]
    markers += [
        svg.Marker("cycles", d.at, f"{d.kind} {d.action} (cycle {d.cycle_id})", "canary")
        for d in view.canary_decisions
    ]
    chart = svg.timeline(
        bars, markers, now=view.now, lanes=("serving", "cycles"), aria="timeline of versions and cycles"
    )
    legend = (
        '<div class="legend">'
        '<span><i class="sw" style="background:#0072b2"></i>serving</span>'
        '<span><i class="sw" style="background:#cc79a7"></i>serving after a rollback</span>'
        '<span><i class="sw" style="background:#1a7f37"></i>promoted cycle / promotion</span>'
        '<span><i class="sw" style="background:#cf222e"></i>rejected or failed cycle / rollback</span>'
        '<span><i class="sw" style="background:#9a6700"></i>held</span>'
        '<span><i class="sw" style="background:#0969da"></i>running</span>'
        '<span><i class="sw" style="background:#e69f00"></i>canary decision</span></div>'
    )
    return chart + legend


def _signals(series: Sequence[Series], *, empty: str | None = None) -> str:
    if not series:
        return (
            f'<p class="empty">{_e(empty)}</p>'
            if empty
            else '<p class="empty">no live signals recorded yet (samples labelled with a version: the daemon\'s '
            "evaluations, <code>qtha observe --label version=…</code>, the server's usage log)</p>"
        )
    by_name: dict[str, list[Series]] = defaultdict(list)
    for s in series:
        by_name[s.name].append(s)
    charts = []
    for name, group in sorted(by_name.items()):
        lines = [svg.Line(s.version, [(t.timestamp(), v) for t, v in s.points]) for s in group]
        source = ", ".join(sorted({s.source for s in group}))
        charts.append(
            f'<div><h3>{_e(name)} <span class="muted">({_e(source)})</span></h3>'
            + svg.line_chart(lines, x_format="time", y_title=name, aria=f"{name} per version over time")
            + "</div>"
        )
    return '<div class="grid2">' + "".join(charts) + "</div>"


def _cycle_table(view: ConsoleView) -> str:
    if not view.cycles:
        return '<p class="empty">no cycles yet</p>'
    rows = []
    for cycle in view.cycles:
        decision = view.promotions.get(cycle.id)
        recipe = cycle.recipe
        short = ", ".join(
            f"{k}={recipe[k]}"
            for k in ("adapter", "qnn_mode", "qubits", "layers", "rank", "steps")
            if recipe.get(k)
        )
        rows.append(
            f'<tr class="cycle-row" id="cycle-{cycle.id}"><td><a href="/console/cycles/{cycle.id}">#{cycle.id}</a></td>'
            f"<td>{_state_badge(cycle)}</td><td>{_e(_when(cycle.started_at))}</td>"
            f'<td class="num">{_e(_duration(cycle.started_at, cycle.finished_at, view.now))}</td>'
            f"<td>{''.join(f'<span class=chip>{_e(r)}</span>' for r in cycle.trigger_reasons)}</td>"
            f"<td><code>{_e(short)}</code></td>"
            f"<td>{_badge(decision.action) if decision else '—'}</td>"
            f"<td>{_e((cycle.outcome or cycle.error or '')[:200])}</td></tr>"
        )
    head = (
        "<tr><th>cycle</th><th>state</th><th>started</th><th class=num>took</th><th>trigger reasons</th>"
        "<th>recipe</th><th>decision</th><th>outcome</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _versions_table(view: ConsoleView) -> str:
    if not view.versions:
        return '<p class="empty">no versions yet: the base model serves</p>'
    rows = []
    for v in reversed(view.versions):
        metric = v.numeric_metrics().get("eval_mean")
        cycle = f'<a href="/console/cycles/{v.cycle_id}">#{v.cycle_id}</a>' if v.cycle_id is not None else "—"
        rows.append(
            f"<tr><td><code>{_e(v.id)}</code></td><td>{_badge(v.status)}</td><td><code>{_e(v.parent_id or 'base')}"
            f"</code></td><td>{cycle}</td><td>{_e(v.adapter_kind)}</td><td>{_e(_when(v.created_at))}</td>"
            f"<td class=num>{_num(metric)}</td></tr>"
        )
    head = (
        "<tr><th>version</th><th>status</th><th>parent</th><th>cycle</th><th>adapter</th><th>created</th>"
        "<th class=num>eval_mean</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _serving_table(view: ConsoleView) -> str:
    if not view.serving:
        return '<p class="empty">nothing promoted yet: the base model serves</p>'
    rollbacks = {e.epoch for e in view.serve_entries if e.details.get("rollback")}
    rows = [
        f"<tr><td class=num>{s.epoch}</td><td><code>{_e(s.version_id)}</code></td>"
        f"<td>{_e(_when(s.served_from))}</td><td>{_e(_when(s.served_until) if s.served_until else 'now')}</td>"
        f"<td>{_badge('rollback') if s.epoch in rollbacks else _badge('promote')}</td>"
        f"<td>{_e(s.moved_by)}</td><td>{_e(s.reason[:240])}</td></tr>"
        for s in reversed(view.serving)
    ]
    head = "<tr><th class=num>epoch</th><th>version</th><th>from</th><th>until</th><th>move</th><th>by</th><th>why</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


# -- a cycle's card ---------------------------------------------------------------------------------------------------
def render_cycle(card: CycleCard, *, standalone: bool = False) -> str:
    """A cycle's card: trigger, recipe and plan, training curve, validation evidence, canary, decision.

    Args:
        standalone: the file written beside the cycle (no links into the live console).
    """
    c = card.cycle
    body = [
        f'<h1 id="cycle-title">Cycle {c.id} {_state_badge(c)}</h1>',
        _facts(card),
        "<h2>Why it ran</h2>",
        "".join(f'<span class="chip">{_e(r)}</span>' for r in c.trigger_reasons) or '<p class="empty">—</p>',
        _reasons(card.trigger.reasons) if card.trigger else "",
        "<h2>Recipe and plan</h2>",
        '<div class="grid2"><div><h3>recipe</h3>',
        _kv_table(c.recipe),
        "</div><div><h3>plan</h3>",
        _kv_table(c.plan),
        "</div></div>",
        _reasons(card.recipe_decision.reasons) if card.recipe_decision else "",
        "<h2>Training</h2>",
        _training(card),
        "<h2>Validation evidence</h2>",
        _validation(card.evidence),
        "<h2>Canary</h2>",
        _canary(card),
        "<h2>Decision</h2>",
        _decision(card),
        "<h2>Every decision of this cycle</h2>",
        _all_decisions(card.decisions),
    ]
    return _page(f"qtha cycle {c.id}", "".join(body), now=card.now, standalone=standalone)


def _facts(card: CycleCard) -> str:
    c = card.cycle
    rows = [
        ("started", _when(c.started_at)),
        ("finished", _when(c.finished_at) if c.finished_at else f"running ({c.state})"),
        ("took", _duration(c.started_at, c.finished_at, card.now)),
        ("champion when it began", c.parent_id or "base model"),
        ("candidate", c.candidate_id or "—"),
        ("backend", c.backend or "—"),
        ("owner", f"{c.owner or '—'}" + (f" (resumed {c.resumes}×)" if c.resumes else "")),
        ("outcome", c.outcome or c.error or "—"),
    ]
    return (
        '<dl class="facts panel">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"
    )


def _training(card: CycleCard) -> str:
    if not card.losses:
        return '<p class="empty">no training loss recorded for this cycle</p>'
    first, last = card.losses[0], card.losses[-1]
    total = card.cycle.recipe.get("steps")
    summary = (
        f"<p>train loss {_num(first[1])} at step {first[0]} → <b>{_num(last[1])}</b> at step {last[0]}"
        + (f" of {_e(total)}" if total else "")
        + "</p>"
    )
    chart = svg.line_chart(
        [svg.Line("train_loss", [(float(s), v) for s, v in card.losses])],
        x_title="step",
        y_title="train loss",
        aria="training loss per step",
    )
    return summary + chart


def _validation(ev: Evidence | None) -> str:
    if ev is None:
        return '<p class="empty">no promotion decision recorded (the cycle did not reach validation)</p>'
    smoke = "—" if ev.smoke_ok is None else _badge("pass" if ev.smoke_ok else "fail")
    rows = [
        ("candidate mean score", _num(ev.candidate_mean)),
        (f"compared with ({_e(ev.compared_with or 'nothing')}) mean score", _num(ev.champion_mean)),
        ("mean paired gain", _num(ev.mean_gain, signed=True)),
        (
            f"{_num((ev.confidence or 0.95) * 100, '.0f')}% bootstrap lower bound of the gain",
            _num(ev.lcb, signed=True),
        ),
        ("paired examples", "—" if ev.paired is None else str(ev.paired)),
    ]
    table = "<table>" + "".join(f"<tr><th>{k}</th><td class=num>{v}</td></tr>" for k, v in rows)
    table += f"<tr><th>servability smoke test</th><td class=num>{smoke}</td></tr></table>"
    parts = ['<div class="grid2"><div>', table, "</div><div>", _slices(ev), "</div></div>"]
    if ev.differences:
        markers = [(0.0, "0 (no change)")]
        if ev.mean_gain is not None:
            markers.append((ev.mean_gain, f"mean {ev.mean_gain:+.4g}"))
        band = None
        if ev.lcb is not None:
            level = f"{(ev.confidence or 0.95) * 100:.0f}%"
            band = (ev.lcb, max(ev.differences), f"{level} interval of the mean: ≥ {ev.lcb:+.4g}")
        parts.append("<h3>Candidate − champion, per held-out example</h3>")
        parts.append(
            svg.histogram(
                ev.differences,
                markers=markers,
                band=band,
                x_title="score difference (candidate − champion; > 0: the candidate is better)",
                aria="per-example differences with the bootstrap interval",
            )
        )
    else:
        parts.append('<p class="empty">no per-example differences recorded with this decision</p>')
    return "".join(parts)


def _slices(ev: Evidence) -> str:
    if not ev.slices:
        return '<p class="empty">no slices recorded</p>'
    css = {"no regression": "pass", "regressed": "fail", "too small to judge": "note"}
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{n}</td><td class=num>{_num(mean, signed=True)}</td>"
        f"<td>{_badge(verdict, css.get(verdict, 'note'))}</td></tr>"
        for name, n, mean, verdict in ev.slices
    )
    return (
        "<table><tr><th>slice</th><th class=num>n</th><th class=num>mean difference</th><th>gate</th></tr>"
        f"{rows}</table>"
    )


def _canary(card: CycleCard) -> str:
    if not card.canary and not card.canary_decisions:
        return (
            '<p class="empty">no canary for this cycle: no live signals of its candidate were recorded while it ran '
            "(the offline gate decided alone)</p>"
        )
    parts = [_signals(card.canary, empty="no live signals of the candidate recorded")]
    for decision in card.canary_decisions:
        parts.append(
            f"<h3>{_e(decision.kind)} → {_badge(decision.action)} <span class=muted>{_e(_when(decision.at))}"
            "</span></h3>"
        )
        parts.append(_reasons(decision.reasons))
        parts.append(_kv_table(decision.evidence))
    return "".join(parts)


def _decision(card: CycleCard) -> str:
    decision = card.promotion
    c = card.cycle
    if decision is None:
        return f"<p>{_state_badge(c)} {_e(c.outcome or c.error or 'no decision yet')}</p>"
    return (
        f'<div class="panel" id="decision"><p>{_badge(decision.action)} <b>{_e(decision.kind)}</b> at '
        f"{_e(_when(decision.at))} — cycle ended {_state_badge(c)}</p>{_reasons(decision.reasons)}"
        f"<p class=muted>{_e(c.outcome or c.error or '')}</p></div>"
    )


def _all_decisions(decisions: Sequence[DecisionRecord]) -> str:
    if not decisions:
        return '<p class="empty">none recorded</p>'
    parts = []
    for d in decisions:
        evidence = {k: v for k, v in d.evidence.items() if k != "differences"}
        if "differences" in d.evidence:
            evidence["differences"] = f"{len(d.evidence['differences'])} values (drawn above)"
        parts.append(
            f"<details><summary>{_e(_when(d.at))} <b>{_e(d.kind)}</b> → {_badge(d.action)}</summary>"
            f"{_reasons(d.reasons)}<pre>{_e(json.dumps(evidence, indent=2, sort_keys=True, default=str))}</pre>"
            "</details>"
        )
    return "".join(parts)


def render_error(status: str, message: str, *, now: datetime) -> str:
    """A small page for 401/404/…, with the message escaped."""
    return _page(
        f"qtha console: {status}", f"<h1>{_e(status)}</h1><p>{_e(message)}</p>", now=now, standalone=False
    )
