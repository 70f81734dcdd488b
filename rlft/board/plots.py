"""The figures of ``rlft board`` and ``rlft plot`` (plotly): metric curves of several runs
overlaid with optional smoothing, the stacked timing breakdown of a step, and the colour of a
token by one of its per-token statistics.

Imported only where the ``rlft[board]`` extra is installed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS, sample_colorscale
from plotly.subplots import make_subplots

X_AXES = {"step": "step", "time": "wall time (s, summed step times)"}

TIMING_PARTS = (
    ("rollout", "timing/rollout_s"),
    ("reward", "timing/reward_s"),
    ("train", "timing/train_s"),
    ("sync", "timing/weight_sync_s"),
    ("eval", "timing/eval_s"),
)
"""The stacked parts of a step's time, and the metric each comes from; idle = the rest."""


def smooth(values: Sequence[float | None], weight: float) -> list[float | None]:
    """Exponential moving average with bias correction (a weight of 0 returns ``values``); a
    missing or non-finite value stays missing and does not enter the average."""
    if weight <= 0:
        return list(values)
    out: list[float | None] = []
    average, norm = 0.0, 0.0
    for value in values:
        if value is None or not math.isfinite(value):
            out.append(None)
            continue
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(average / norm)
    return out


def x_values(rows: list[dict[str, Any]], x: str) -> list[float]:
    """Steps, or the wall time at the end of each step (its ``timing/step_s`` summed)."""
    if x == "step":
        return [row["step"] for row in rows]
    total, out = 0.0, []
    for row in rows:
        total += row.get("timing/step_s") or 0.0
        out.append(total)
    return out


def curves_figure(
    runs: dict[str, list[dict[str, Any]]],
    metrics: list[str],
    x: str = "step",
    smoothing: float = 0.0,
    max_points: int = 0,
) -> go.Figure:
    """One panel per metric, one line per run (the same colour in every panel); with smoothing,
    the raw values as a faint line under the smoothed one. ``max_points`` > 0 thins each line to
    about that many points (:func:`thin`; the board's screen-sized view), 0 keeps every step."""
    metrics = metrics or ["reward/mean"]
    fig = make_subplots(
        rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=metrics, vertical_spacing=0.08
    )
    for index, (name, rows) in enumerate(runs.items()):
        colour = DEFAULT_PLOTLY_COLORS[index % len(DEFAULT_PLOTLY_COLORS)]
        xs = x_values(rows, x)
        for panel, metric in enumerate(metrics, start=1):
            points = [(xv, r.get(metric)) for xv, r in zip(xs, rows, strict=True)]
            points = [(xv, v) for xv, v in points if isinstance(v, (int, float))]
            if not points:
                continue
            # numpy arrays: plotly validates them at once instead of value by value (10k steps: ~10x)
            px, py = (np.asarray(v, dtype=float) for v in zip(*points, strict=True))
            if smoothing > 0:
                fig.add_trace(
                    go.Scatter(
                        **thin(px, py, max_points),
                        mode="lines",
                        line={"color": colour, "width": 1},
                        opacity=0.25,
                        showlegend=False,
                        hoverinfo="skip",
                        legendgroup=name,
                    ),
                    row=panel,
                    col=1,
                )
                py = np.asarray([np.nan if v is None else v for v in smooth(py.tolist(), smoothing)])
            fig.add_trace(
                go.Scatter(
                    **thin(px, py, max_points),
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=panel == 1,
                    line={"color": colour, "width": 2},
                ),
                row=panel,
                col=1,
            )
    fig.update_xaxes(title_text=X_AXES[x], row=len(metrics), col=1)
    fig.update_layout(
        height=max(320, 260 * len(metrics)),
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.08 / len(metrics) - 0.05},
    )
    return fig


def thin(xs: np.ndarray, ys: np.ndarray, max_points: int) -> dict[str, np.ndarray]:
    """``{"x", "y"}`` with at most about ``max_points`` points: the line is cut into
    ``max_points / 2`` runs of consecutive points and each keeps its lowest and highest point,
    so spikes stay visible (0 = keep all)."""
    if max_points <= 0 or len(xs) <= max_points:
        return {"x": xs, "y": ys}
    edges = np.linspace(0, len(xs), max_points // 2 + 1).astype(int)
    keep = set()
    for lo, hi in itertools.pairwise(edges):
        if hi > lo:
            segment = np.nan_to_num(ys[lo:hi], nan=0.0)
            keep.update((lo + int(segment.argmin()), lo + int(segment.argmax())))
    index = np.asarray(sorted(keep))
    return {"x": xs[index], "y": ys[index]}


def timing_parts(row: dict[str, Any]) -> dict[str, float]:
    """A step's time split into rollout, reward, train, sync, eval and idle seconds.

    With ``trainer.async`` rollout and reward overlap training: they are scaled down to the time
    the loop waited for them (``timing/rollout_wait_s``), the part that the step did pay."""
    parts = {name: float(row.get(key) or 0.0) for name, key in TIMING_PARTS}
    wait = row.get("timing/rollout_wait_s")
    generated = parts["rollout"] + parts["reward"]
    if isinstance(wait, (int, float)) and generated > wait:
        scale = wait / generated if generated else 0.0
        parts["rollout"] *= scale
        parts["reward"] *= scale
    step = float(row.get("timing/step_s") or 0.0)
    parts["idle"] = max(0.0, step - sum(parts.values()))
    return parts


def timing_figure(name: str, rows: list[dict[str, Any]], x: str = "step", max_points: int = 0) -> go.Figure:
    """The stacked seconds of each step's parts (:func:`timing_parts`) over the run; with
    ``max_points`` > 0 and more steps, each point is the mean of a stretch of steps."""
    xs = np.asarray(x_values(rows, x), dtype=float)
    split = [timing_parts(row) for row in rows]
    edges = None
    if 0 < max_points < len(rows):
        edges = np.linspace(0, len(rows), max_points + 1).astype(int)
        xs = xs[edges[1:] - 1]  # each stretch at its last step
    fig = go.Figure()
    for part in [*(p for p, _ in TIMING_PARTS), "idle"]:
        ys = np.asarray([s[part] for s in split], dtype=float)
        if edges is not None:
            ys = np.add.reduceat(ys, edges[:-1]) / np.diff(edges)
        if ys.any():
            fig.add_trace(
                go.Scatter(x=xs, y=ys, name=part, mode="lines", stackgroup="time", line={"width": 0.5})
            )
    fig.update_layout(
        title=f"time per step: {name}",
        xaxis_title=X_AXES[x],
        yaxis_title="seconds",
        height=320,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        template="plotly_white",
    )
    return fig


TOKEN_STATS = {
    "sampler_logprob": ("sampler log-prob", "Viridis", None),
    "entropy": ("entropy", "Viridis", None),
    "gap": ("learner - sampler log-prob", "RdBu", 0.0),
    "advantage": ("advantage", "RdBu", 0.0),
}
"""What tokens can be coloured by: label, plotly colour scale and centre (diverging scales)."""


def token_values(stats: dict[str, list[float]], by: str) -> list[float]:
    """The per-token values ``by`` names (``gap`` = learner minus sampler log-probability)."""
    if by == "gap":
        return [a - b for a, b in zip(stats["learner_logprob"], stats["sampler_logprob"], strict=True)]
    return stats[by]


def token_colours(values: list[float], by: str) -> list[str]:
    """An ``rgb(...)`` colour per value on ``by``'s scale: min to max, or symmetric about the
    centre for a diverging scale."""
    _, scale, centre = TOKEN_STATS[by]
    finite = [v for v in values if math.isfinite(v)] or [0.0]
    if centre is None:
        low, high = min(finite), max(finite)
    else:
        span = max(abs(v - centre) for v in finite) or 1.0
        low, high = centre - span, centre + span
    width = (high - low) or 1.0
    positions = [min(1.0, max(0.0, (v - low) / width)) if math.isfinite(v) else 0.5 for v in values]
    return sample_colorscale(scale, positions) if positions else []
