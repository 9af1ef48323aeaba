"""DAG-file parse time, measured the way Airflow's dag-processor parses a file, and without its
``gc.freeze()`` for comparison.

How the dag-processor parses (Airflow 3.3): the manager (airflow/dag_processing/manager.py,
``DagFileProcessorManager.before_run``) calls ``gc.freeze()`` "to prevent COW in forked process
parsing dag file" before its parsing loop; each file is then parsed by
``DagFileProcessorProcess.start`` (airflow/dag_processing/processor.py), a plain ``os.fork()`` of
that manager (``WatchedSubprocess.start`` in airflow/sdk/execution_time/supervisor.py, no exec on
Linux) whose child runs ``_parse_file_entrypoint`` -> ``BundleDagBag``. So when a DAG file is
parsed, every object of Airflow's import sits in the permanent generation: the collector never
walks it, and the full collection that the file's allocations would otherwise trigger (about
0.2 s over Airflow's objects) does not happen.

The probe does the same: one interpreter imports ``airflow.sdk``, calls ``gc.freeze()``, then
forks a child per file and repeat that loads the file (``parse_s``, the figure compared with the
0.3 s target). A second interpreter does the same without ``gc.freeze()`` (``parse_no_freeze_s``,
what a fresh ``python`` that imports airflow.sdk then the file spends). Wall and CPU time are both
reported: the machine may be shared, and CPU time moves less with the load (``load_average``).

In a venv without bytecode (no ``.pyc``, PYTHONDONTWRITEBYTECODE set, as on the dev machine) every
module is compiled from source on each parse; ``bytecode_cached`` says which case was measured,
and ``pycache_prefix`` measures with a bytecode cache (PYTHONPYCACHEPREFIX, warmed first).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_DIR = REPO_ROOT / "dags"

# argv: "freeze" | "nofreeze", repeat, targets as JSON ([[label, "file"|"module", path or name]]).
_PROBE = r"""
import gc, importlib, importlib.util, json, os, sys, time
t0 = time.perf_counter()
import airflow
import airflow.sdk
sdk_s = time.perf_counter() - t0
freeze, repeat, targets = sys.argv[1] == "freeze", int(sys.argv[2]), json.loads(sys.argv[3])
bytecode = os.path.exists(importlib.util.cache_from_source(airflow.__file__))
if freeze:
    gc.freeze()  # as DagFileProcessorManager.before_run does before it forks the parsers


def child(kind, target):
    collections = []
    gc.callbacks.append(lambda phase, info: collections.append((phase, info["generation"], time.perf_counter())))
    w0, c0 = time.perf_counter(), time.process_time()
    dags = 0
    if kind == "file":
        spec = importlib.util.spec_from_file_location("bench_parsed_dag_file", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from airflow.sdk import DAG

        dags = sum(isinstance(v, DAG) for v in vars(module).values())
    else:
        importlib.import_module(target)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    starts = [(g, t) for phase, g, t in collections if phase == "start"]
    stops = [t for phase, _g, t in collections if phase == "stop"]
    full = [stop - start for (g, start), stop in zip(starts, stops) if g == 2]
    return {"wall_s": wall, "cpu_s": cpu, "dags": dags, "full_gcs": len(full), "full_gc_s": sum(full)}


results = {}
for label, kind, target in targets:
    runs = []
    for _ in range(repeat):
        read_fd, write_fd = os.pipe()
        pid = os.fork()  # the dag-processor forks a child per file
        if pid == 0:
            os.close(read_fd)
            code = 0
            try:
                out = child(kind, target)
            except BaseException as exc:
                out, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
            os.write(write_fd, json.dumps(out).encode())
            os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            out = json.loads(pipe.read() or b'{"error": "no result"}')
        os.waitpid(pid, 0)
        if "error" in out:
            print(json.dumps({"error": f"{label}: {out['error']}"}))
            sys.exit(1)
        runs.append(out)
    results[label] = runs
print(json.dumps({"airflow_sdk_import_s": sdk_s, "bytecode_cached": bytecode, "results": results}))
"""

# A fresh interpreter without Airflow: what a task pays to import the engine.
_FRESH_IMPORT = r"""
import importlib, json, sys, time
t0 = time.perf_counter()
importlib.import_module(sys.argv[1])
print(json.dumps({"load_s": time.perf_counter() - t0}))
"""

# -X importtime of one file's parse, after airflow.sdk and gc.freeze() (lines after the marker).
_IMPORTTIME = r"""
import gc, importlib.util, sys
import airflow.sdk
gc.freeze()
print("--- bench marker ---", file=sys.stderr, flush=True)
spec = importlib.util.spec_from_file_location("bench_parsed_dag_file", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""


def _env(airflow_home: Path, pycache_prefix: Path | None = None) -> dict[str, str]:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "plugins"), str(REPO_ROOT), str(DAGS_DIR)]),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    if pycache_prefix is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache_prefix)
    return env


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"parse-time probe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _probe(freeze: bool, repeat: int, targets: list[list[str]], env: dict) -> dict:
    proc = _run(["-c", _PROBE, "freeze" if freeze else "nofreeze", str(repeat), json.dumps(targets)], env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


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


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def measure(airflow_home: Path, repeat: int = 3, pycache_prefix: Path | None = None) -> dict:
    """Per DAG file: median over ``repeat`` forked parses, with and without gc.freeze()."""
    env = _env(airflow_home, pycache_prefix)
    airflow_home.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    files = [["file:" + p.name, "file", str(p)] for p in sorted(DAGS_DIR.glob("*.py"))]
    modules = [["module:retention.dag_factory", "module", "retention.dag_factory"]]
    # Warm the OS file cache (and the bytecode cache, if any); Airflow writes its config once.
    _probe(True, 1, files[:1], env)
    frozen = _probe(True, repeat, files + modules, env)
    unfrozen = _probe(False, repeat, files + modules, env)

    per_file = {}
    for label, _kind, _path in files:
        f, u = frozen["results"][label], unfrozen["results"][label]
        per_file[label.removeprefix("file:")] = {
            "parse_s": _median(f, "wall_s"),
            "parse_cpu_s": _median(f, "cpu_s"),
            "parse_no_freeze_s": _median(u, "wall_s"),
            "parse_no_freeze_cpu_s": _median(u, "cpu_s"),
            "full_gc_no_freeze_s": _median(u, "full_gc_s"),
            "full_gcs": [max(r["full_gcs"] for r in f), max(r["full_gcs"] for r in u)],  # frozen, not
            "dags": f[0]["dags"],
        }
    engine = [
        json.loads(_run(["-c", _FRESH_IMPORT, "retention.archive.engine"], env).stdout.strip().splitlines()[-1])[
            "load_s"
        ]
        for _ in range(repeat)
    ]
    slowest = max(per_file, key=lambda name: per_file[name]["parse_s"]) if per_file else None
    heaviest = []
    if slowest:
        stderr = _run(["-X", "importtime", "-c", _IMPORTTIME, str(DAGS_DIR / slowest)], env).stderr
        table = _importtime_table(stderr.split("--- bench marker ---", 1)[-1])
        heaviest = sorted(((m, round(cum / 1e6, 3)) for m, (_s, cum) in table.items()), key=lambda x: -x[1])[:12]
    return {
        "method": "import airflow.sdk, gc.freeze() (parse_s) or not (parse_no_freeze_s), fork, load the file",
        "airflow_sdk_import_s": statistics.median([frozen["airflow_sdk_import_s"], unfrozen["airflow_sdk_import_s"]]),
        "bytecode_cached": frozen["bytecode_cached"],
        "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "repeat": repeat,
        "files": per_file,
        "modules": {
            "retention.dag_factory (after airflow.sdk, frozen)": _median(
                frozen["results"]["module:retention.dag_factory"], "wall_s"
            ),
            "retention.dag_factory (after airflow.sdk, not frozen)": _median(
                unfrozen["results"]["module:retention.dag_factory"], "wall_s"
            ),
            "retention.archive.engine (fresh interpreter)": statistics.median(engine),
        },
        "slowest_file": slowest,
        "slowest_file_heaviest_imports_s": heaviest,
    }
