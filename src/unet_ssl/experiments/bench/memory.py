"""Peak memory of pipeline stages for `unet-ssl bench --stages`: each stage run as its own process, its peak
resident set size read from the kernel."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable


def stage_memory(stages: list[str], params_path: str, cwd: Path, timeout: float = 0, grace: float = 120,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Runs each pipeline stage as its own process (`python -m unet_ssl <stage>`) in `cwd` and
    reads its peak resident set size from the kernel (wait4's ru_maxrss, in KiB on Linux).

    With `timeout`, a stage still running after that many seconds is interrupted (SIGINT, so its
    MLflow run ends as KILLED; SIGKILL `grace` seconds later if a long tensor operation keeps it
    from noticing): training reaches its peak with the first step, so a long stage's peak is
    measured without running it to the end. Such a stage counts as stopped, not failed."""
    rows = []
    for stage in stages:
        start = time.perf_counter()
        # SIGINT back to its default, so Python raises KeyboardInterrupt even when this bench runs
        # in the background (where the shell starts jobs with SIGINT ignored).
        proc = subprocess.Popen([sys.executable, "-m", "unet_ssl", "--params", params_path, stage], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        timers = [threading.Timer(timeout, os.kill, [proc.pid, signal.SIGINT]),
                  threading.Timer(timeout + grace, os.kill, [proc.pid, signal.SIGKILL])] if timeout else []
        for timer in timers:
            timer.start()
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        for timer in timers:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        stopped = bool(timers) and proc.returncode != 0 and seconds >= timeout
        last = [line for line in output.splitlines() if line.startswith(stage.split("-")[0])]
        summary = (f"interrupted after {timeout:g} s, ended at {seconds:.0f} s" if stopped else
                   last[-1] if last else output.strip().splitlines()[-1] if output.strip() else "")
        rows.append({"stage": stage, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
                     "returncode": 0 if stopped else proc.returncode, "stopped": stopped, "summary": summary})
        log(f"stage {stage}: exit {proc.returncode}{' (stopped)' if stopped else ''}, {seconds:.0f}s, "
            f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
        if proc.returncode != 0 and not stopped:
            log(output[-3000:])
            break
    return rows
