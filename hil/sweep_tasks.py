"""What a sweep runs on Ray: the calibration and point tasks (on workers), the tracker actor they report
their start to, and starting or joining Ray (:func:`init_ray`).  The driver side, which submits them and
alone writes ``sweep.json``, is :mod:`hil.sweep_engine`."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path


class SweepError(ValueError):
    """A sweep that cannot start or continue: one line saying what to do."""



def where_am_i() -> tuple[str, str]:
    import ray

    return ray.get_runtime_context().get_node_id(), socket.gethostname()


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def calibration_task(job: dict, cal_dir: str, limits, tracker) -> dict:
    """Make (or finish) one shared calibration; never raises: an error is returned with the record."""
    from calibration.run import CalibrationParams
    from hil.demo import ensure_calibration

    node, host = where_am_i()
    started = time.time()
    tracker.started.remote("calibration", job["name"], node, host, started)
    record = {"node_id": node, "host": host, "started_sec": started}
    try:
        ensure_calibration(job["board"], Path(cal_dir), CalibrationParams(**job["params"]), limits=limits,
                           progress=False)
    except Exception as exc:  # recorded; the points that need it report it
        record["error"] = error_text(exc)
    record["ended_sec"] = time.time()
    return record


def point_task(point: dict, run_dir: str, limits, tracker, calibration: dict | None = None) -> dict:
    """Run (or resume) one point's training run; never raises: an error is returned with the record."""
    from hil.demo import ensure_run
    from hil.train import TrainConfig

    node, host = where_am_i()
    started = time.time()
    record = {"node_id": node, "host": host, "started_sec": started}
    if calibration is not None and calibration.get("error"):
        record.update(error=f"its calibration {point['calibration']} failed: {calibration['error']}",
                      ended_sec=time.time())
        return record
    tracker.started.remote("point", point["name"], node, host, started)
    try:
        summary, _ = ensure_run(TrainConfig(**point["config"]), Path(run_dir), limits=limits, progress=False,
                                allow_code_change=point.get("allow_code_change", False))
        metric = next((k for k in ("test_accuracy", "test_ssim") if summary.get(k) is not None), None)
        if metric is not None:
            record["metric"] = {metric: summary[metric]}
    except Exception as exc:
        record["error"] = error_text(exc)
    record["ended_sec"] = time.time()
    return record


class Tracker:
    """A tiny actor the tasks tell when they start, so sweep.json can say which points are running."""

    def __init__(self):
        self._events: list[tuple] = []

    def started(self, kind: str, name: str, node: str, host: str, t: float) -> None:
        self._events.append((kind, name, node, host, t))

    def drain(self) -> list[tuple]:
        events, self._events = self._events, []
        return events


# ---------------------------------------------------------------------------------------- Ray set-up

def init_ray(address: str | None, num_cpus: int | None, resources: dict[str, float]) -> bool:
    """Start the embedded local Ray (or join ``address``), quietly; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR, "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            # "local": always a new embedded instance, never a cluster another process on this machine
            # happens to run (ray.init() without an address would join the latest one it finds)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, resources=resources or None,
                     include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SweepError(f"cannot start Ray{' at ' + address if address else ''}: {error_text(exc)}") from None
    # Ray's own loggers speak at INFO/WARNING on the driver: a sweep's user sees only the sweep
    for name in ("ray", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return True


def check_resources(needed: set[str]) -> None:
    import ray

    have = ray.cluster_resources()
    missing = sorted(r for r in needed if have.get(r, 0) < 1)
    if missing:
        json_text = ", ".join(f'"{r}": 1' for r in missing)
        raise SweepError(f"no node of the Ray cluster holds {', '.join(missing)}: start the node wired to that "
                         f"bench with: ray start --address ADDR --resources '{{{json_text}}}' (docs/SWEEPS.md)")
