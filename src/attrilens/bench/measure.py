"""What the benchmarks measure of their own run, kept once for all of them: progress lines on stderr, median wall
time, resident memory (now, the process's peak, the peak while one call runs) and the facts every run records."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from attrilens.bench.report import machine


def stderr_log(enabled: bool = True, prefix: str | None = None) -> Callable[..., None]:
    """A progress printer: its arguments as one line on stderr (after `prefix`); a no-op when not `enabled`."""
    if not enabled:
        return lambda *a: None
    lead = (prefix,) if prefix else ()
    return lambda *a: print(*lead, *a, file=sys.stderr, flush=True)


log = stderr_log()


def median_time(fn: Callable[[], Any], reps: int) -> float:
    """The median wall seconds of `reps` calls of fn()."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def rss_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _max_rss_mib() -> float:
    """This process's lifetime peak resident set size from getrusage, in MiB (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (one decimal)."""
    return round(_max_rss_mib(), 1)


def peak_rss_during(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, dict[str, float | None]]:
    """Run fn(*args, **kwargs); return its result and {"rss_before_mb", "peak_rss_mb"}: the process's resident set before, and its
    peak while fn ran (Linux: the high-water mark reset through /proc/self/clear_refs; elsewhere the process's
    lifetime peak from getrusage, which may predate fn)."""
    before = rss_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        exact = True
    except OSError:
        exact = False
    out = fn(*args, **kwargs)
    peak = rss_mb("VmHWM") if exact else _max_rss_mib()
    return out, {"rss_before_mb": before, "peak_rss_mb": peak}


def record_run_facts(info: dict, t0: float) -> None:
    """The run's wall seconds (since `t0`, a perf_counter), peak resident memory and machine, recorded once per
    benchmark."""
    info["seconds"] = round(time.perf_counter() - t0, 1)
    info["peak_rss_mib"] = peak_rss_mib()
    info["machine"] = machine()
