"""What a bench figure was measured on: device, library versions, code commit, date and machine load."""
from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from unet_ssl.paths import REPO


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def code_commit() -> str:
    """The checkout's commit, noting uncommitted changes to the package's source."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "src")
        return git("rev-parse", "--short", "HEAD") + (" plus uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device, load_before: tuple[float, ...]) -> list[str]:
    """Markdown list lines; the load average before and after shows how busy the machine was."""
    try:
        import torchvision

        vision = torchvision.__version__
    except ImportError:
        vision = "not installed"
    load = lambda la: " / ".join(f"{x:.2f}" for x in la)  # noqa: E731
    return [
        f"- device: {device_name(device)}",
        f"- torch {torch.__version__}, torchvision {vision}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} torch threads, code at commit {code_commit()}",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- load average (1 / 5 / 15 min) before: {load(load_before)}, after: {load(os.getloadavg())} "
        "(other jobs on the machine slow every figure down alike)",
    ]
