"""How fast ``rlft board`` pages load on a large run (CPU only, no GPU; needs rlft[board] and
Debian's chromium + chromium-driver).

Writes a synthetic finished run of ``--steps`` steps (metrics.jsonl with ~40 metrics per step)
and ``--samples-gb`` of samples.jsonl (rows with tokens and token statistics, as
``tracking.token_stats=true`` writes them), serves the board over it, and times in headless
chromium, from navigation to the content being drawn: the runs table (status shown), the curves
(4 metrics x every step), the inspector on a middle step (its tokens coloured). Each page is
loaded ``--repeats`` times; the first load of the runs table also parses metrics.jsonl.

    python benchmarks/board_load.py --dir /tmp/board_bench --steps 10000 --samples-gb 1

``--screenshots DIR --runs-dir RUNS`` instead saves a small PNG of each page of the board over
RUNS (the README's docs/board_*.png).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlft.config import RLFTConfig, TrainerConfig

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1100,700",
]


def make_run(run: Path, steps: int, samples_bytes: float, rows_per_step: int = 4) -> None:
    """A finished synthetic run: config.yaml, status.json, metrics.jsonl, samples.jsonl."""
    run.mkdir(parents=True, exist_ok=True)
    cfg = RLFTConfig(trainer=TrainerConfig(max_steps=steps, output_dir=str(run)))
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    now = time.time()
    status = {
        "state": "finished",
        "pid": 0,
        "host": socket.gethostname(),
        "argv": ["train", "recipe=synthetic"],
    }
    (run / "status.json").write_text(json.dumps({**status, "started": now - steps, "ended": now}))
    rng = random.Random(0)
    names = [f"extra/metric_{i}" for i in range(24)]
    with (run / "metrics.jsonl").open("w") as file:
        for step in range(1, steps + 1):
            reward = 1 - math.exp(-step / (steps / 4)) + rng.gauss(0, 0.05)
            row = {
                "step": step,
                "reward/mean": reward,
                "loss/policy": rng.gauss(0, 0.01),
                "kl": step / steps * 0.1,
            }
            row.update(
                {"response_len/mean": 100 + rng.random() * 20, "timing/step_s": 1.0 + rng.random() * 0.1}
            )
            row.update({"timing/rollout_s": 0.5, "timing/reward_s": 0.05, "timing/train_s": 0.3})
            row.update({"timing/weight_sync_s": 0.05, "timing/rollout_wait_s": 0.55})
            row.update({name: rng.random() for name in names})
            file.write(json.dumps(row) + "\n")
    per_row = samples_bytes / (steps * rows_per_step)
    n_tokens = max(1, int(per_row / 43))  # ~43 bytes per token with its statistics
    tokens = [f" t{i % 97}" for i in range(n_tokens)]
    stats = {
        "sampler_logprob": [round(-rng.random() * 5, 4) for _ in tokens],
        "learner_logprob": [round(-rng.random() * 5, 4) for _ in tokens],
        "entropy": [round(rng.random() * 3, 4) for _ in tokens],
        "advantage": [0.5] * n_tokens,
    }
    body = json.dumps(
        {
            "prompt": "Repeat this digit: 7",
            "completion": "".join(tokens),
            "reward": 0.5,
            "rewards": {"fn": 0.5},
            "finish_reason": "length",
            "policy_version": 0,
            "tokens": tokens,
            "token_stats": stats,
        }
    )[1:]
    with (run / "samples.jsonl").open("w") as file:
        for step in range(1, steps + 1):
            for i in range(rows_per_step):
                file.write(f'{{"step": {step}, "group": {i // 2}, "index": {i}, {body}\n')


def serve(runs_dir: Path) -> tuple[str, Any]:
    from werkzeug.serving import make_server

    from rlft.board.app import create_app

    server = make_server("127.0.0.1", 0, create_app(runs_dir).server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def timed_load(driver: Any, url: str, ready: str, timeout: float = 300) -> float:
    """Seconds from navigating to ``url`` until the JavaScript ``ready`` expression is true."""
    from selenium.webdriver.support.ui import WebDriverWait

    start = time.perf_counter()
    driver.get(url)
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(f"return {ready}"))
    return time.perf_counter() - start


PAGES = {
    "runs": (
        "/",
        "[...document.querySelectorAll('#runs-table td')].some(td => td.textContent === 'finished')",
    ),
    "curves": (
        "/curves?runs={run}",
        "document.querySelectorAll('#curves-graph .scatterlayer .trace').length >= 4",
    ),
    "inspector": ("/inspect?run={run}&step={step}", "document.querySelectorAll('span.tok').length > 0"),
}


def measure(args: argparse.Namespace) -> None:
    runs_dir = Path(args.dir)
    run = runs_dir / "big"
    if not (run / "samples.jsonl").exists():
        start = time.perf_counter()
        make_run(run, args.steps, args.samples_gb * 1e9)
        print(f"wrote the synthetic run in {time.perf_counter() - start:.0f} s")
    size = (run / "samples.jsonl").stat().st_size
    lines = sum(1 for _ in (run / "metrics.jsonl").open())
    print(f"run: {lines} steps, samples.jsonl {size / 1e9:.2f} GB")

    from rlft.board.runs import RunReader

    reader = RunReader(run, "big")
    start = time.perf_counter()
    reader.summary()
    first = time.perf_counter() - start
    start = time.perf_counter()
    reader.summary()
    again = time.perf_counter() - start
    start = time.perf_counter()
    rows = reader.samples.rows(args.steps // 2)
    lookup = time.perf_counter() - start
    print(
        f"server side: runs-table summary {first:.3f} s first (parses metrics.jsonl), {again * 1e3:.1f} ms "
        f"after; samples of step {args.steps // 2} ({len(rows)} rows) found in {lookup * 1e3:.1f} ms"
    )

    base, server = serve(runs_dir)
    driver = browser()
    results = {}
    try:
        for name, (path, ready) in PAGES.items():
            url = base + path.format(run="big", step=args.steps // 2)
            results[name] = [timed_load(driver, url, ready) for _ in range(args.repeats)]
            print(name, [round(t, 2) for t in results[name]], flush=True)
    finally:
        driver.quit()
        server.shutdown()
    print("| page | first load (s) | median of the rest (s) |")
    print("|---|---|---|")
    for name, times in results.items():
        rest = statistics.median(times[1:]) if len(times) > 1 else float("nan")
        print(f"| {name} | {times[0]:.2f} | {rest:.2f} |")


def screenshots(args: argparse.Namespace) -> None:
    from PIL import Image

    base, server = serve(Path(args.runs_dir))
    driver = browser()
    out = Path(args.screenshots)
    out.mkdir(parents=True, exist_ok=True)
    pages = {
        "runs": ("/", PAGES["runs"][1].replace("'finished'", "'finished' || td.textContent === 'running'")),
        "curves": (f"/curves?runs={args.run}", PAGES["curves"][1].replace(">= 4", ">= 1")),
        "inspector": (f"/inspect?run={args.run.split(',')[0]}&step={args.step}", PAGES["inspector"][1]),
        "launch": ("/launch", "document.getElementsByName('trainer.max_steps').length > 0"),
    }
    try:
        for name, (path, ready) in pages.items():
            timed_load(driver, base + path, ready)
            if name == "inspector":
                driver.find_element("xpath", "//label[contains(., 'sampler log-prob')]").click()
            if name == "launch":
                field = driver.find_element("name", "trainer.max_steps")
                field.send_keys("x")
                driver.find_element("id", "launch-check").click()
                time.sleep(3)
                driver.execute_script("document.getElementsByName('trainer.max_steps')[0].scrollIntoView()")
            time.sleep(2)
            path = out / f"board_{name}.png"
            driver.save_screenshot(str(path))
            Image.open(path).convert("RGB").quantize(colors=48).save(path, optimize=True)
            print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    finally:
        driver.quit()
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="/tmp/board_bench", help="folder for the synthetic run")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--samples-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--screenshots", help="save page screenshots here instead of measuring")
    parser.add_argument("--runs-dir", help="with --screenshots: the runs folder to show")
    parser.add_argument(
        "--run", default="", help="with --screenshots: run(s) for the curves, comma-separated"
    )
    parser.add_argument("--step", type=int, default=1, help="with --screenshots: the inspector's step")
    args = parser.parse_args()
    screenshots(args) if args.screenshots else measure(args)


if __name__ == "__main__":
    sys.exit(main())
