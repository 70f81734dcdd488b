"""The ``rlft`` command: ``rlft train [recipe=<name>] [group=option] [key=value ...]``,
``rlft eval <checkpoint or model> [overrides]``, ``rlft export <checkpoint> --to <dir>``,
``rlft recipes`` (the shipped recipes, one line each), ``rlft init <recipe>`` (copies a recipe and
the files it references into the current directory, to edit), ``rlft board [RUNS_DIR]`` and
``rlft plot RUN... --metrics a,b --out fig.png``.

Configs are composed with Hydra from rlft's shipped ``conf/`` (plus ``recipes/<name>.yaml`` as the
``recipe`` group; a ``recipes/<name>.yaml`` in the current directory wins over the shipped one) and
validated against the dataclasses in :mod:`rlft.config` before anything starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlft.config import RLFTConfig, register_configs
from rlft.shipped import SHIPPED_ROOT, first_config_root, recipe_candidates, recipe_description, shipped_files
from rlft.validation import validate

CONF_DIR = Path(os.environ.get("RLFT_CONF_DIR", SHIPPED_ROOT / "conf"))


class ConfigError(ValueError):
    """A config that cannot be composed or does not validate; the message names the key."""


def load_config(overrides: list[str], local_recipes: bool = True) -> RLFTConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` and validate it into an :class:`RLFTConfig`.

    With ``local_recipes``, ``recipe=<name>`` takes ``./recipes/<name>.yaml`` when there is one.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not (CONF_DIR / "config.yaml").is_file():
        raise ConfigError(
            f"no rlft config at {CONF_DIR}: the installation lacks its shipped files; reinstall rlft "
            "(pip install rlft, or pip install -e . from a checkout) or point RLFT_CONF_DIR at a conf/ folder"
        )
    recipe = next((m[1] for o in overrides if (m := re.fullmatch(r"recipe=(\w+)", o))), None)
    if recipe is not None and recipe != "null":
        candidates = recipe_candidates(recipe, CONF_DIR)[int(not local_recipes) :]
        if not any(path.is_file() for path in candidates):
            raise ConfigError(
                f"recipe {recipe!r} not found; looked at: {', '.join(map(str, candidates))}. "
                "`rlft recipes` lists the shipped recipes; `rlft init <recipe>` copies one here to edit."
            )
    register_configs()
    try:
        # The first config root holds ./recipes (so a user's recipe wins); rlft's conf/ comes after it.
        with tempfile.TemporaryDirectory(prefix="rlft-conf-") as first_root:
            first_config_root(Path(first_root), CONF_DIR, local_recipes)
            with initialize_config_dir(config_dir=first_root, version_base=None):
                search_path = f"hydra.searchpath=[{json.dumps(f'file://{CONF_DIR}')}]"
                composed = compose("config", overrides=[*overrides, search_path])
        _reject_unknown_keys(composed, OmegaConf.structured(RLFTConfig))
        cfg = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from err
    return _validated(cfg)


def load_run_config(path: Path, overrides: list[str]) -> RLFTConfig:
    """A run's saved ``config.yaml`` with ``key=value`` overrides, validated like :func:`load_config`."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        saved = OmegaConf.load(path)
        merged = OmegaConf.merge(OmegaConf.structured(RLFTConfig), saved, OmegaConf.from_dotlist(overrides))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from err
    return _validated(cfg)


def _validated(cfg: Any) -> RLFTConfig:
    """``cfg`` (an ``RLFTConfig`` built by OmegaConf) after :func:`validate`, as a ConfigError if bad."""
    assert isinstance(cfg, RLFTConfig)
    try:
        validate(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return cfg


def _reject_unknown_keys(node: Any, schema: Any, prefix: str = "") -> None:
    """Hydra's ``+key=value`` can add keys the schema lacks, which would be silently dropped."""
    if OmegaConf.get_type(schema) is dict:  # a free-form mapping (e.g. reward.params): any key
        return
    for key in node:
        if key not in schema:
            raise ConfigError(
                f"unknown config key '{prefix}{key}': it is not in the rlft schema (rlft/config.py)"
            )
        if OmegaConf.is_dict(node[key]) and OmegaConf.is_dict(schema[key]):
            _reject_unknown_keys(node[key], schema[key], f"{prefix}{key}.")


def _explain(err: BaseException) -> str:
    """The error and its causes, one line each (Hydra keeps the useful part in the cause)."""
    lines = []
    while err is not None:
        lines += [line for line in str(err).splitlines() if line.strip() and line not in lines]
        err = err.__cause__
    return "\n  ".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlft", description="RL fine-tuning of language models on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_parser = sub.add_parser(
        "train",
        help="run an RL experiment",
        description="Compose a config from conf/ (and recipes/) with Hydra overrides, then train. "
        "Example: rlft train recipe=quickstart trainer.max_steps=20 cluster.mode=local",
    )
    train_parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides: recipe=NAME, group=option, key=value"
    )
    train_parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    export_parser = sub.add_parser("export", help="write a checkpoint as a plain Hugging Face model")
    export_parser.add_argument(
        "checkpoint", help="a checkpoint directory, e.g. runs/x/checkpoints/step_00000100"
    )
    export_parser.add_argument("--to", required=True, help="new directory for the model and tokenizer")
    eval_parser = sub.add_parser(
        "eval",
        help="evaluate a checkpoint or a model: mean@k and pass@k on held-out prompts",
        description="A checkpoint is evaluated with its run's config.yaml plus key=value overrides; "
        "a model directory or hub id with the config composed from conf/ plus Hydra overrides. "
        "The rows are the data config's eval split (e.g. data.eval_size=64 for builtin tasks). "
        "Example: rlft eval runs/quickstart/checkpoints/step_00000200 data.eval_size=64 eval.k=8",
    )
    eval_parser.add_argument("model", help="a checkpoint directory, a model directory or a hub id")
    eval_parser.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.k=8")
    eval_parser.add_argument("--output", help="also write the metrics to this JSON file")
    sub.add_parser("recipes", help="list the shipped recipes, one line each")
    init_parser = sub.add_parser(
        "init",
        help="copy a shipped recipe and the reward files it uses into the current directory, to edit",
        description="Writes recipes/<recipe>.yaml and the shipped files it references (e.g. "
        "rewards/gsm8k.py) here; `rlft train recipe=<recipe>` run from here then uses these copies.",
    )
    init_parser.add_argument("recipe", help="a shipped recipe's name (see `rlft recipes`)")
    init_parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    board_parser = sub.add_parser(
        "board",
        help="a local web app over run directories: runs, curves, samples token by token, launch",
        description="Serve the board over the run directories in RUNS_DIR (default: runs). Needs the "
        "extra rlft[board]. Example: rlft board runs --port 8050",
    )
    board_parser.add_argument("runs_dir", nargs="?", default="runs", help="folder holding run directories")
    board_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    board_parser.add_argument("--port", type=int, default=8050, help="port to listen on (default 8050)")
    plot_parser = sub.add_parser(
        "plot",
        help="plot metrics of runs into a figure file (the board's plotting code)",
        description="Example: rlft plot runs/a runs/b --metrics reward/mean,kl --out fig.png. "
        ".png/.svg/.pdf need Chrome or Chromium (kaleido); .html needs nothing. Needs rlft[board].",
    )
    plot_parser.add_argument("runs", nargs="+", help="run directories")
    plot_parser.add_argument("--metrics", default="reward/mean", help="comma-separated metric names")
    plot_parser.add_argument("--out", required=True, help="figure file: .png, .svg, .pdf or .html")
    plot_parser.add_argument("--x", choices=["step", "time"], default="step", help="x axis (default step)")
    plot_parser.add_argument("--smoothing", type=float, default=0.0, help="EMA weight in [0, 1) (default 0)")
    plot_parser.add_argument(
        "--timing", action="store_true", help="plot the first run's time per step instead"
    )
    args = parser.parse_args(argv)
    if args.command == "recipes":
        return _list_recipes()
    if args.command == "init":
        return _init(args.recipe, args.force)
    if args.command == "board":
        return _board(Path(args.runs_dir), args.host, args.port)
    if args.command == "plot":
        return _plot(args)
    if args.command == "export":
        from rlft.export import export_checkpoint

        try:
            print(f"exported to {export_checkpoint(args.checkpoint, args.to)}")
        except (FileNotFoundError, FileExistsError) as err:
            print(f"rlft: error: {err}", file=sys.stderr)
            return 2
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "eval":
        return _evaluate(args.model, args.overrides, args.output)
    try:
        cfg = load_config(args.overrides)
    except ConfigError as err:
        print(f"rlft: config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        return 0

    from rlft.errors import Interrupted, RunFailed, SetupError

    if cfg.algorithm.kind == "preference":
        from rlft.trainers.preference import train
    else:
        from rlft.trainers.online import train
    from rlft.trainers.run_status import mark_ended, set_command

    set_command(["train", *args.overrides])
    run_dir = Path(cfg.trainer.output_dir)
    try:
        train(cfg)
    except SetupError as err:
        mark_ended(run_dir, "crashed", str(err))  # if found after the run's folder was written
        print(f"rlft: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        mark_ended(run_dir, "crashed", str(err))
        print(f"rlft: error: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        mark_ended(run_dir, "interrupted")
        where = f"checkpoint {stop.checkpoint}" if stop.checkpoint else "no checkpoint yet: it starts afresh"
        print(
            f"rlft: interrupted after step {stop.step} of {stop.max_steps} ({where}); resume with: "
            f"{_resume_command(args.overrides, stop.run_dir)}",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:  # while starting, before the steps
        mark_ended(run_dir, "interrupted")
        print("rlft: interrupted before the first step; nothing to resume", file=sys.stderr)
        return 130
    except BaseException as err:
        mark_ended(run_dir, "crashed", f"{type(err).__name__}: {err}")
        raise
    mark_ended(run_dir, "finished")
    print(f"run directory: {run_dir}")
    return 0


def _resume_command(overrides: list[str], run_dir: Path) -> str:
    """The ``rlft train`` command that continues an interrupted run in ``run_dir``."""
    replaced = ("trainer.output_dir=", "trainer.resume=", "trainer.overwrite=")
    kept = [o for o in overrides if not o.startswith(replaced)]
    return shlex.join(["rlft", "train", *kept, f"trainer.output_dir={run_dir}", "trainer.resume=auto"])


def _board_extra() -> str | None:
    """None if the ``rlft[board]`` packages import, else the error to print."""
    try:
        import dash  # noqa: F401
        import plotly  # noqa: F401
    except ImportError as err:
        return f"rlft: error: {err.name} is missing: install the board's extra, pip install 'rlft[board]'"
    return None


def _board(runs_dir: Path, host: str, port: int) -> int:
    """``rlft board``: serve the app until Ctrl-C; runs it launched are stopped on exit."""
    if error := _board_extra():
        print(error, file=sys.stderr)
        return 2
    if not runs_dir.is_dir():
        print(f"rlft: error: {runs_dir} is not a folder (give the folder your runs are in)", file=sys.stderr)
        return 2
    from rlft.board.app import create_app

    app = create_app(runs_dir.resolve())
    print(f"rlft board over {runs_dir.resolve()}: http://{host}:{port}/")
    try:
        app.run(host=host, port=port, debug=False)
    finally:
        app.board_launcher.stop_all()
    return 0


def _plot(args: argparse.Namespace) -> int:
    """``rlft plot``: the board's curves (or timing) figure of ``args.runs`` written to ``args.out``."""
    if error := _board_extra():
        print(error, file=sys.stderr)
        return 2
    from rlft.board import plots
    from rlft.board.runs import MetricsFile

    runs = {}
    for run in args.runs:
        rows = MetricsFile(Path(run) / "metrics.jsonl").rows()
        if not rows:
            print(f"rlft: error: {run} has no metrics (no {Path(run) / 'metrics.jsonl'})", file=sys.stderr)
            return 2
        runs[Path(run).name] = rows
    metrics = [m for m in args.metrics.split(",") if m]
    known = {key for rows in runs.values() for row in rows for key in row}
    if missing := [m for m in metrics if m not in known]:
        print(f"rlft: error: no run logged {missing}; logged: {sorted(known - {'step'})}", file=sys.stderr)
        return 2
    if args.timing:
        name, rows = next(iter(runs.items()))
        fig = plots.timing_figure(name, rows, args.x)
    else:
        fig = plots.curves_figure(runs, metrics, args.x, args.smoothing)
    out = Path(args.out)
    if out.suffix == ".html":
        fig.write_html(out, include_plotlyjs=True)  # self-contained: plotly.js inlined
    else:
        try:
            fig.write_image(out, width=900, height=fig.layout.height or 400)
        except Exception as err:  # kaleido: no Chrome found, or a format it does not know
            print(f"rlft: error: could not write {out}: {err}", file=sys.stderr)
            return 2
    print(f"wrote {out}")
    return 0


def _list_recipes() -> int:
    """``rlft recipes``: each shipped recipe's name and the first line of its header."""
    recipes = sorted((CONF_DIR / "recipe").glob("*.yaml"))
    width = max(len(path.stem) for path in recipes)
    for path in recipes:
        print(f"{path.stem:<{width}}  {recipe_description(path)}")
    print(f"\n({path.parent}) Run one with `rlft train recipe=<name>`; `rlft init <name>` copies it here.")
    return 0


def _init(recipe: str, force: bool) -> int:
    """``rlft init``: copy a shipped recipe and the shipped files its config references into the cwd."""
    try:
        cfg = load_config([f"recipe={recipe}"], local_recipes=False)
    except ConfigError as err:
        print(f"rlft: config error: {err}", file=sys.stderr)
        return 2
    copies = {Path("recipes", f"{recipe}.yaml"): CONF_DIR / "recipe" / f"{recipe}.yaml"}
    referenced = shipped_files(OmegaConf.to_container(OmegaConf.structured(cfg)))
    copies |= {Path(p): SHIPPED_ROOT / p for p in referenced}
    existing = [str(dest) for dest in copies if dest.exists()]
    if existing and not force:
        print(f"rlft: error: {', '.join(existing)} exist; --force overwrites them", file=sys.stderr)
        return 2
    for dest, source in copies.items():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        print(f"wrote {dest}")
    print(f"Edit them, then run `rlft train recipe={recipe}` from this directory: its files win over rlft's.")
    return 0


def _evaluate(model: str, overrides: list[str], output: str | None) -> int:
    """``rlft eval``: print the metrics as JSON (and write them to ``output``)."""
    from rlft.evaluation import evaluate_checkpoint, evaluate_model
    from rlft.trainers.online import PROJECT_ROOT

    path = Path(model)
    checkpoint = (path / "trainer_state.json").is_file()
    try:
        if checkpoint:  # <run>/checkpoints/step_N -> <run>/config.yaml
            cfg = load_run_config(path.parent.parent / "config.yaml", overrides)
        else:
            cfg = load_config([*overrides, f"model.path={model}"])
    except (ConfigError, OSError) as err:
        print(f"rlft: config error: {err}", file=sys.stderr)
        return 2
    try:
        if checkpoint:
            metrics = evaluate_checkpoint(path, cfg, [PROJECT_ROOT])
        else:
            metrics = evaluate_model(cfg, [PROJECT_ROOT])
    except (OSError, ValueError, TypeError, ImportError, AttributeError) as err:
        print(f"rlft: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=2)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
