"""The ``rlft board`` web app (Dash): four pages over the run directories under one folder.

- ``/``: the runs table (status, recipe, algorithm, model, steps, best and last reward, wall
  time); select runs to compare their curves or inspect one.
- ``/curves?runs=a,b``: metrics over steps or wall time, runs overlaid, smoothing, and each
  run's stacked timing breakdown; refreshed every few seconds while runs write.
- ``/inspect?run=a&step=N``: the samples of one step, tokens coloured by a per-token statistic
  (``tracking.token_stats=true``), reward functions' scores, group; multi-turn episodes by role.
- ``/launch``: a recipe and a form generated from the config schema; checked as ``rlft train``
  checks it, then started (and stopped), with its log followed.

Everything the page loads (Dash's and plotly's JavaScript) is served by this server from the
installed packages: nothing is fetched from the internet.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import dash
from dash import ALL, Input, Output, State, dash_table, dcc, html

from rlft.board import plots, schema
from rlft.board.launcher import Launcher, tail
from rlft.board.runs import LOG_FILE, RunReader, RunsRoot

REFRESH_MS = 2000
MAX_POINTS = 2000
"""Points per curve sent to the page (lowest and highest of each stretch of steps; a screen is
narrower than that); ``rlft plot`` draws every step."""
DEFAULT_METRICS = ["reward/mean", "loss/policy", "kl", "response_len/mean"]
ROLE_COLOURS = {"system": "#eeeeee", "user": "#e3f0ff", "assistant": "#f3f9e8", "tool": "#fff4dd"}
STYLE = {
    "fontFamily": "system-ui, sans-serif",
    "margin": "0 auto",
    "maxWidth": "1200px",
    "padding": "8px 16px",
}
NAV_LINK = {"marginRight": "18px", "fontWeight": "600"}


def create_app(runs_dir: Path, cwd: Path | None = None) -> dash.Dash:
    """The board over ``runs_dir``; runs it launches start in ``cwd`` (default: this process's)."""
    root = RunsRoot(runs_dir)
    launcher = Launcher(cwd)
    app = dash.Dash(__name__, title="rlft board", suppress_callback_exceptions=True, serve_locally=True)
    app.board_launcher = launcher  # for tests and shutdown
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            html.Div(
                [
                    html.B("rlft board", style={"marginRight": "24px"}),
                    dcc.Link("Runs", href="/", style=NAV_LINK),
                    dcc.Link("Curves", href="/curves", style=NAV_LINK),
                    dcc.Link("Inspector", href="/inspect", style=NAV_LINK),
                    dcc.Link("Launch", href="/launch", style=NAV_LINK),
                    html.Span(str(runs_dir), style={"color": "#888", "float": "right"}),
                ],
                style={"borderBottom": "1px solid #ddd", "padding": "8px 0", "marginBottom": "8px"},
            ),
            html.Div(id="page"),
        ],
        style=STYLE,
    )

    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    def route(path: str, search: str) -> Any:
        query = {k: v[0] for k, v in parse_qs((search or "").lstrip("?")).items()}
        if path == "/curves":
            return _curves_page(root, [r for r in query.get("runs", "").split(",") if r])
        if path == "/inspect":
            return _inspect_page(root, query.get("run"), query.get("step"))
        if path == "/launch":
            return _launch_page()
        return _runs_page()

    _runs_callbacks(app, root)
    _curves_callbacks(app, root)
    _inspect_callbacks(app, root)
    _launch_callbacks(app, root, launcher, runs_dir)
    return app


# --- runs -----------------------------------------------------------------------------------------

RUN_COLUMNS = [
    ("name", "run"),
    ("status", "status"),
    ("recipe", "recipe"),
    ("algorithm", "algorithm"),
    ("model", "model"),
    ("steps", "steps"),
    ("best_reward", "best reward"),
    ("last_reward", "last reward"),
    ("wall_time", "wall time"),
]
STATUS_COLOURS = {"running": "#1f77b4", "finished": "#2ca02c", "crashed": "#d62728", "interrupted": "#ff7f0e"}


def _runs_page() -> Any:
    return html.Div(
        [
            dash_table.DataTable(
                id="runs-table",
                columns=[{"name": label, "id": key} for key, label in RUN_COLUMNS],
                data=[],
                row_selectable="multi",
                selected_rows=[],
                sort_action="native",
                style_cell={"textAlign": "left", "fontFamily": "inherit", "padding": "4px 8px"},
                style_header={"fontWeight": "bold"},
                style_data_conditional=[
                    {"if": {"filter_query": f'{{status}} = "{s}"', "column_id": "status"}, "color": c}
                    for s, c in STATUS_COLOURS.items()
                ],
                tooltip_duration=None,
            ),
            html.Div(
                [
                    html.Button("Compare curves", id="to-curves"),
                    html.Button("Inspect samples", id="to-inspect", style={"marginLeft": "8px"}),
                    html.Span(" select runs in the table first", style={"color": "#888"}),
                ],
                style={"marginTop": "10px"},
            ),
            dcc.Interval(id="runs-refresh", interval=REFRESH_MS),
        ]
    )


def _format(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _runs_callbacks(app: dash.Dash, root: RunsRoot) -> None:
    @app.callback(
        Output("runs-table", "data"),
        Output("runs-table", "tooltip_data"),
        Input("runs-refresh", "n_intervals"),
    )
    def refresh(_: Any) -> Any:
        rows, tooltips = [], []
        for reader in root.readers():
            s = reader.summary()
            wall = "" if s.wall_time_s is None else str(datetime.timedelta(seconds=int(s.wall_time_s)))
            rows.append(
                {
                    "name": s.name,
                    "status": s.status,
                    "recipe": s.recipe,
                    "algorithm": s.algorithm,
                    "model": s.model,
                    "steps": f"{s.steps}/{s.max_steps}" if s.max_steps else str(s.steps),
                    "best_reward": _format(s.best_reward),
                    "last_reward": _format(s.last_reward),
                    "wall_time": wall,
                }
            )
            tooltips.append({"status": s.reason or s.status, "name": str(s.path)})
        return rows, tooltips

    @app.callback(
        Output("url", "href"),
        Input("to-curves", "n_clicks"),
        Input("to-inspect", "n_clicks"),
        State("runs-table", "data"),
        State("runs-table", "selected_rows"),
        prevent_initial_call=True,
    )
    def open_selected(curves: Any, inspect: Any, data: list[dict], selected: list[int]) -> Any:
        if not (curves or inspect):  # the buttons were just drawn
            return dash.no_update
        names = [data[i]["name"] for i in selected or [] if i < len(data)]
        if dash.ctx.triggered_id == "to-curves":
            return "/curves?" + urlencode({"runs": ",".join(names)})
        return "/inspect" + ("?" + urlencode({"run": names[0]}) if names else "")


# --- curves ---------------------------------------------------------------------------------------


def _curves_page(root: RunsRoot, runs: list[str]) -> Any:
    names = [r.name for r in root.readers()]
    runs = [r for r in runs if r in names] or names[-1:]
    return html.Div(
        [
            html.Div(
                [
                    html.Label("runs"),
                    dcc.Dropdown(id="curves-runs", options=names, value=runs, multi=True),
                    html.Label("metrics"),
                    dcc.Dropdown(id="curves-metrics", multi=True, value=[]),
                    html.Div(
                        [
                            html.Label("x axis ", style={"marginRight": "6px"}),
                            dcc.RadioItems(
                                id="curves-x",
                                options=[
                                    {"label": label, "value": key} for key, label in plots.X_AXES.items()
                                ],
                                value="step",
                                inline=True,
                            ),
                            html.Label("smoothing", style={"marginLeft": "24px"}),
                            html.Div(
                                dcc.Slider(
                                    id="curves-smoothing",
                                    min=0,
                                    max=0.99,
                                    step=0.01,
                                    value=0.0,
                                    marks=None,
                                    tooltip={"placement": "bottom"},
                                ),
                                style={"width": "260px", "display": "inline-block"},
                            ),
                        ],
                        style={"display": "flex", "alignItems": "center", "marginTop": "8px"},
                    ),
                ]
            ),
            dcc.Graph(id="curves-graph", config={"displaylogo": False}),
            html.H4("Time per step"),
            html.Div(id="curves-timing"),
            dcc.Interval(id="curves-refresh", interval=REFRESH_MS),
            dcc.Store(id="curves-logged"),
        ]
    )


def _curves_callbacks(app: dash.Dash, root: RunsRoot) -> None:
    @app.callback(
        Output("curves-metrics", "options"),
        Output("curves-metrics", "value"),
        Input("curves-runs", "value"),
        State("curves-metrics", "value"),
    )
    def metric_options(runs: list[str], chosen: list[str]) -> Any:
        names = sorted({m for r in _readers(root, runs) for m in r.metrics.metric_names()})
        chosen = [m for m in chosen or [] if m in names] or [m for m in DEFAULT_METRICS if m in names]
        return names, chosen

    @app.callback(
        Output("curves-logged", "data"),
        Input("curves-runs", "value"),
        Input("curves-refresh", "n_intervals"),
        State("curves-logged", "data"),
    )
    def logged(runs: list[str], _: Any, before: Any) -> Any:
        """How many steps each run has logged; changes (and so redraws) only when a run logs one:
        a long run's figure is large, and a redraw slower than the refresh must not pile up."""
        now = [[r.name, len(r.metrics.rows())] for r in _readers(root, runs)]
        return dash.no_update if now == before else now

    @app.callback(
        Output("curves-graph", "figure"),
        Output("curves-timing", "children"),
        Input("curves-logged", "data"),
        Input("curves-metrics", "value"),
        Input("curves-x", "value"),
        Input("curves-smoothing", "value"),
    )
    def draw(logged: Any, metrics: list[str], x: str, smoothing: float) -> Any:
        data = {r.name: r.metrics.rows() for r in _readers(root, [name for name, _ in logged or []])}
        timing = [
            dcc.Graph(figure=plots.timing_figure(name, rows, x, MAX_POINTS), config={"displaylogo": False})
            for name, rows in data.items()
            if any("timing/step_s" in row for row in rows[-1:])
        ]
        figure = plots.curves_figure(data, metrics or [], x, smoothing or 0.0, max_points=MAX_POINTS)
        return figure, timing


def _readers(root: RunsRoot, names: list[str] | None) -> list[RunReader]:
    found = {r.name: r for r in root.readers()}
    return [found[n] for n in names or [] if n in found]


# --- inspector ------------------------------------------------------------------------------------


def _inspect_page(root: RunsRoot, run: str | None, step: str | None) -> Any:
    names = [r.name for r in root.readers()]
    run = run if run in names else (names[-1] if names else None)
    return html.Div(
        [
            html.Div(
                [
                    html.Div(
                        [html.Label("run"), dcc.Dropdown(id="inspect-run", options=names, value=run)],
                        style={"width": "45%"},
                    ),
                    html.Div(
                        [
                            html.Label("step"),
                            dcc.Input(
                                id="inspect-step",
                                type="number",
                                value=int(step) if step and step.isdigit() else None,
                                debounce=True,
                                style={"width": "100px", "display": "block"},
                            ),
                        ],
                        style={"marginLeft": "16px"},
                    ),
                    html.Div(
                        id="inspect-range", style={"marginLeft": "12px", "color": "#666", "alignSelf": "end"}
                    ),
                ],
                style={"display": "flex"},
            ),
            html.Div(
                [
                    html.Label("colour tokens by ", style={"marginRight": "6px"}),
                    dcc.RadioItems(
                        id="inspect-colour",
                        options=[
                            {"label": label, "value": key} for key, (label, _, _) in plots.TOKEN_STATS.items()
                        ],
                        value="advantage",
                        inline=True,
                    ),
                ],
                style={"display": "flex", "marginTop": "8px"},
            ),
            html.Div(id="inspect-samples", style={"marginTop": "8px"}),
        ]
    )


def _inspect_callbacks(app: dash.Dash, root: RunsRoot) -> None:
    @app.callback(
        Output("inspect-step", "value"),
        Output("inspect-step", "min"),
        Output("inspect-step", "max"),
        Output("inspect-range", "children"),
        Input("inspect-run", "value"),
        State("inspect-step", "value"),
    )
    def step_range(run: str | None, step: int | None) -> Any:
        reader = root.get(run) if run else None
        span = reader.samples.step_range() if reader else None
        if span is None:
            return None, None, None, "no samples logged yet"
        first, last = span
        step = step if isinstance(step, int) and first <= step <= last else last
        return step, first, last, f"steps {first}..{last}"

    @app.callback(
        Output("inspect-samples", "children"),
        Input("inspect-run", "value"),
        Input("inspect-step", "value"),
        Input("inspect-colour", "value"),
    )
    def show(run: str | None, step: int | None, colour_by: str) -> Any:
        reader = root.get(run) if run else None
        if reader is None or step is None:
            return html.P("choose a run and a step")
        rows = reader.samples.rows(int(step))
        if not rows:
            return html.P(f"no samples at step {step}")
        return [_sample_card(row, colour_by) for row in rows]


def _sample_card(row: dict[str, Any], colour_by: str) -> Any:
    scores = row.get("rewards") or {}
    facts = [
        f"group {row['group']}" if "group" in row else None,
        f"sample {row['index']}" if "index" in row else None,
        f"reward {_format(row.get('reward'))}",
        *(f"{name} {_format(value)}" for name, value in scores.items()),
        f"{row['num_turns']} turns" if "num_turns" in row else None,
        "turn rewards " + ", ".join(map(_format, row["turn_rewards"])) if row.get("turn_rewards") else None,
        row.get("finish_reason"),
        f"policy v{row['policy_version']}" if "policy_version" in row else None,
        f"error: {row['error']}" if row.get("error") else None,
    ]
    header = html.Div("  ·  ".join(f for f in facts if f), className="sample-facts", style={"color": "#444"})
    if row.get("messages"):
        body = _messages(row["messages"])
    else:
        body = [
            html.Div(
                row.get("prompt", ""),
                className="prompt",
                style={"whiteSpace": "pre-wrap", "color": "#555", "background": "#f6f6f6", "padding": "4px"},
            ),
            _completion(row, colour_by),
        ]
    return html.Div(
        [header, *body],
        className="sample",
        style={"border": "1px solid #ddd", "borderRadius": "6px", "padding": "8px", "margin": "8px 0"},
    )


def _completion(row: dict[str, Any], colour_by: str) -> Any:
    """The completion's tokens, each with its background from ``colour_by`` and every statistic
    in its tooltip; plain text where the run recorded no token statistics."""
    tokens, stats = row.get("tokens"), row.get("token_stats")
    if not tokens or not stats or (colour_by == "gap" and "learner_logprob" not in stats):
        return html.Div(row.get("completion", ""), className="completion", style={"whiteSpace": "pre-wrap"})
    values = plots.token_values(stats, colour_by)
    colours = plots.token_colours(values, colour_by)
    # One HTML string rather than a component per token: a page of thousands of Dash components
    # takes the browser tens of seconds to mount, one block of markup a fraction of a second.
    spans = []
    for i, (token, colour) in enumerate(zip(tokens, colours, strict=False)):
        tip = "\n".join(f"{k}: {v[i]:.4g}" for k, v in stats.items() if i < len(v))
        text = escape(token).replace("\n", "&#10;")  # no raw newline: a blank line ends raw HTML
        title = escape(f"{token!r}\n{tip}").replace("\n", "&#10;")
        style = f"background-color:{colour};color:{_text_colour(colour)}"
        spans.append(f'<span class="tok" style="{style}" title="{title}">{text}</span>')
    label = plots.TOKEN_STATS[colour_by][0]
    low, high = min(values), max(values)
    legend = html.Div(f"{label}: {low:.3g} .. {high:.3g}", style={"fontSize": "small", "color": "#777"})
    markup = (
        '<div class="completion tokens" style="white-space:pre-wrap;font-family:monospace;line-height:1.7">'
        + "".join(spans)
        + "</div>"
    )
    return html.Div([dcc.Markdown(markup, dangerously_allow_html=True), legend])


def _text_colour(rgb: str) -> str:
    """Black or white, whichever reads better on ``rgb(r, g, b)``."""
    r, g, b = (float(x) for x in re.findall(r"[\d.]+", rgb)[:3])
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def _messages(messages: list[dict[str, Any]]) -> list[Any]:
    """A multi-turn episode, one box per message with its role, tool calls and tool results."""
    out = []
    for message in messages:
        role = str(message.get("role", "?"))
        parts: list[Any] = [html.B(role + (f" ({message['name']})" if message.get("name") else ""))]
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "\n".join(str(p.get("text", p)) if isinstance(p, dict) else str(p) for p in content)
        if content:
            parts.append(html.Div(str(content), style={"whiteSpace": "pre-wrap"}))
        for call in message.get("tool_calls") or []:
            fn = call.get("function", call)
            args = fn.get("arguments", "")
            args = args if isinstance(args, str) else json.dumps(args)
            parts.append(
                html.Code(
                    f"→ {fn.get('name', '?')}({args})", className="tool-call", style={"display": "block"}
                )
            )
        out.append(
            html.Div(
                parts,
                className=f"message role-{role}",
                style={
                    "background": ROLE_COLOURS.get(role, "#fafafa"),
                    "padding": "6px",
                    "margin": "4px 0",
                    "borderRadius": "4px",
                },
            )
        )
    return out


# --- launch ---------------------------------------------------------------------------------------


def _launch_page() -> Any:
    recipes = schema.recipes()
    default = "quickstart" if "quickstart" in recipes else (recipes[0] if recipes else None)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return html.Div(
        [
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("recipe"),
                            dcc.Dropdown(id="launch-recipe", options=recipes, value=default),
                        ],
                        style={"width": "40%"},
                    ),
                    html.Div(
                        [
                            html.Label("run name"),
                            dcc.Input(
                                id="launch-name",
                                value=f"{default}-{stamp}",
                                style={"display": "block", "width": "100%"},
                            ),
                        ],
                        style={"width": "40%", "marginLeft": "16px"},
                    ),
                ],
                style={"display": "flex"},
            ),
            html.P(
                "Values in the command line's override syntax; only the ones you change are passed, "
                "checked exactly as `rlft train` checks them. Hover a key for its documentation.",
                style={"color": "#666"},
            ),
            dcc.Loading(html.Div(id="launch-form")),
            html.Label("more overrides (e.g. algorithm=dr_grpo +reward.params.f.x=1)"),
            dcc.Input(id="launch-extra", value="", style={"width": "100%"}),
            html.Div(
                [
                    html.Button("Check", id="launch-check"),
                    html.Button("Launch", id="launch-start", style={"marginLeft": "8px"}),
                    html.Button("Stop", id="launch-stop", style={"marginLeft": "8px"}),
                ],
                style={"margin": "10px 0"},
            ),
            html.Pre(id="launch-error", style={"color": "#b00", "whiteSpace": "pre-wrap"}),
            html.Div(id="launch-status"),
            html.Pre(
                id="launch-log",
                style={
                    "background": "#111",
                    "color": "#ddd",
                    "padding": "8px",
                    "maxHeight": "360px",
                    "overflow": "auto",
                    "fontSize": "12px",
                },
            ),
            dcc.Store(id="launch-run"),
            dcc.Interval(id="launch-refresh", interval=1000),
        ]
    )


def _field_row(field: schema.Field) -> Any:
    return html.Div(
        [
            html.Label(
                field.key,
                title=f"{field.type}: {field.doc}",
                htmlFor=field.key,
                style={"width": "42%", "fontFamily": "monospace", "fontSize": "13px"},
            ),
            html.Div(
                [
                    dcc.Input(
                        id={"type": "field", "key": field.key},
                        name=field.key,
                        value=field.value,
                        style={"width": "100%"},
                    ),
                    html.Pre(
                        id={"type": "field-error", "key": field.key},
                        className="field-error",
                        style={"color": "#b00", "whiteSpace": "pre-wrap", "margin": "0"},
                    ),
                ],
                style={"width": "56%"},
            ),
        ],
        style={"display": "flex", "margin": "2px 0"},
        title=field.doc,
    )


def _names_key(message: str, key: str) -> bool:
    """Whether ``message`` names the config key ``key`` (not just a longer key it starts)."""
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", message) is not None


def _launch_callbacks(app: dash.Dash, root: RunsRoot, launcher: Launcher, runs_dir: Path) -> None:
    cache: dict[str | None, list[schema.Field]] = {}

    def fields_of(recipe: str | None) -> list[schema.Field]:
        if recipe not in cache:
            cache[recipe] = schema.form_fields(recipe)
        return cache[recipe]

    @app.callback(Output("launch-form", "children"), Input("launch-recipe", "value"))
    def form(recipe: str | None) -> Any:
        sections: dict[str, list[schema.Field]] = {}
        for field in fields_of(recipe):
            sections.setdefault(field.key.split(".")[0], []).append(field)
        return [
            html.Details(
                [html.Summary(f"{name} ({len(fs)})"), *map(_field_row, fs)],
                open=name == "trainer",
                className=f"section-{name}",
            )
            for name, fs in sections.items()
        ]

    def args_of(recipe: str | None, name: str, values: list[str], ids: list[dict], extra: str) -> list[str]:
        initial = {f.key: f.value for f in fields_of(recipe)}
        changed = {
            i["key"]: v
            for i, v in zip(ids, values, strict=True)
            if v is not None and v != initial.get(i["key"])
        }
        return schema.overrides(recipe, changed, extra or "", str(runs_dir / name))

    @app.callback(
        Output("launch-error", "children"),
        Output("launch-run", "data"),
        Output({"type": "field-error", "key": ALL}, "children"),
        Input("launch-check", "n_clicks"),
        Input("launch-start", "n_clicks"),
        State("launch-recipe", "value"),
        State("launch-name", "value"),
        State({"type": "field", "key": ALL}, "value"),
        State({"type": "field", "key": ALL}, "id"),
        State("launch-extra", "value"),
        State("launch-run", "data"),
        prevent_initial_call=True,
    )
    def check_or_start(
        _: Any,
        __: Any,
        recipe: str | None,
        name: str,
        values: list[str],
        ids: list[dict],
        extra: str,
        current: str | None,
    ) -> Any:
        clear = [""] * len(ids)
        name = (name or "").strip()
        if not name or "/" in name or name.startswith("."):
            return "give the run a name (a folder name under the board's runs folder)", current, clear
        args = args_of(recipe, name, values, ids, extra)
        error = schema.check(args)
        command = "rlft train " + " ".join(args)
        if error:  # in full below the buttons, and under each field it names
            named = [error if _names_key(error, i["key"]) else "" for i in ids]
            return f"{command}\n{error}", current, named
        if dash.ctx.triggered_id == "launch-check":
            return f"{command}\nok: the config is valid", current, clear
        run_dir = runs_dir / name
        if launcher.running(run_dir):
            return f"{name} is already running", current, clear
        launcher.start(run_dir, args)
        return f"{command}\nstarted", name, clear

    @app.callback(
        Output("launch-status", "children"),
        Output("launch-log", "children"),
        Input("launch-refresh", "n_intervals"),
        Input("launch-stop", "n_clicks"),
        State("launch-run", "data"),
    )
    def follow(_: Any, __: Any, name: str | None) -> Any:
        if not name:
            return "", ""
        run_dir = runs_dir / name
        if dash.ctx.triggered_id == "launch-stop":
            launcher.stop(run_dir)
        reader = root.get(name)
        if reader is None or not (run_dir / "config.yaml").exists():
            state = "starting" if launcher.running(run_dir) else "exited before it started (see the log)"
            line = html.Span(f"run {name}: {state}", id="launch-state", **{"data-state": state})
        else:
            s = reader.summary()
            state = s.status
            line = html.Span(
                [
                    f"run {name}: ",
                    html.B(s.status),
                    f", step {s.steps}/{s.max_steps}  ",
                    dcc.Link("curves", href=f"/curves?runs={name}"),
                    "  ",
                    dcc.Link("samples", href=f"/inspect?run={name}"),
                ],
                id="launch-state",
                **{"data-state": state},
            )
        return line, tail(run_dir / LOG_FILE)
