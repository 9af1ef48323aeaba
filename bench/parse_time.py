"""DAG-file parse time, each file in a fresh interpreter (the dag-processor parses each file in
a process of its own), and the import time of the shared package.

For each file: the wall time of ``python -c 'import airflow.sdk; <load the file>'`` minus the
median wall time of ``python -c 'import airflow.sdk'`` (interpreter + SDK baseline), and, measured
inside the process, the time to load the file once ``airflow.sdk`` is imported. The second is
the steadier figure and the one compared with the 0.3 s target. The modules a file imports
beyond the baseline are listed with ``-X importtime`` for the slowest file.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_DIR = REPO_ROOT / "dags"

_PROBE = r"""
import importlib, json, sys, time
t0 = time.perf_counter()
if sys.argv[2] == "sdk":
    import airflow.sdk
t1 = time.perf_counter()
target = sys.argv[1]
dags = 0
if target.endswith(".py"):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_parsed_dag_file", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from airflow.sdk import DAG
    dags = sum(isinstance(v, DAG) for v in vars(module).values())
elif target:
    importlib.import_module(target)
t2 = time.perf_counter()
print(json.dumps({"baseline_s": t1 - t0, "load_s": t2 - t1, "dags": dags}))
"""


def _env(airflow_home: Path) -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT), str(DAGS_DIR)]),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def _probe(target: str, with_sdk: bool, env: dict, importtime: bool = False) -> dict:
    cmd = [
        sys.executable,
        *(["-X", "importtime"] if importtime else []),
        "-c",
        _PROBE,
        target,
        "sdk" if with_sdk else "-",
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"parsing {target} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    if importtime:
        result["importtime"] = proc.stderr
    return result


def _importtime_table(stderr: str) -> dict[str, tuple[int, int]]:
    """module -> (self us, cumulative us) from ``-X importtime`` output."""
    table = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:") :].split("|")
        try:
            table[parts[2].strip()] = (int(parts[0]), int(parts[1]))
        except ValueError:
            continue
    return table


def measure(airflow_home: Path, repeat: int = 3) -> dict:
    env = _env(airflow_home)
    airflow_home.mkdir(parents=True, exist_ok=True)
    _probe("", True, env)  # warm the OS file cache and let Airflow write its config once
    baseline = [_probe("", True, env) for _ in range(repeat)]
    base_process = statistics.median(r["process_s"] for r in baseline)
    files = {}
    for path in sorted(DAGS_DIR.glob("*.py")):
        runs = [_probe(str(path), True, env) for _ in range(repeat)]
        files[path.name] = {
            "parse_s": statistics.median(r["load_s"] for r in runs),
            "process_minus_baseline_s": statistics.median(r["process_s"] for r in runs) - base_process,
            "dags": runs[0]["dags"],
        }
    modules = {
        "retention.dag_factory (after airflow.sdk)": statistics.median(
            _probe("retention.dag_factory", True, env)["load_s"] for _ in range(repeat)
        ),
        "retention.engine (fresh interpreter)": statistics.median(
            _probe("retention.engine", False, env)["load_s"] for _ in range(repeat)
        ),
    }
    slowest = max(files, key=lambda name: files[name]["parse_s"]) if files else None
    heaviest = []
    if slowest:
        base_mods = _importtime_table(_probe("", True, env, importtime=True)["importtime"])
        file_mods = _importtime_table(_probe(str(DAGS_DIR / slowest), True, env, importtime=True)["importtime"])
        extra = {m: t for m, t in file_mods.items() if m not in base_mods}
        # Top-level entries of the extra imports: what the file pulled in, with everything below.
        heaviest = sorted(((m, round(cum / 1e6, 3)) for m, (_s, cum) in extra.items()), key=lambda x: -x[1])[:12]
    return {
        "baseline_interpreter_and_airflow_sdk_s": base_process,
        "airflow_sdk_import_s": statistics.median(r["baseline_s"] for r in baseline),
        "files": files,
        "modules": modules,
        "slowest_file": slowest,
        "slowest_file_heaviest_imports_s": heaviest,
    }
