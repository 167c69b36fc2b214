"""The one provenance helper: which code (git revision), which libraries and which machine made an output.

Every log header, checkpoint, benchmark page and results page records these, and all of them ask here.
"""
from __future__ import annotations

import os
import platform
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_revision(short: bool = False, ignore: tuple[str, ...] = ()) -> str:
    """Commit of the code that runs, ``+dirty`` when tracked files outside ``ignore`` (top-level folders, e.g.
    ``docs`` for a pipeline that rewrites its own pages) have changes; ``unknown`` outside git."""
    rev = _git("rev-parse", *(["--short"] if short else []), "HEAD")
    if not rev:
        return "unknown"
    paths = ["--", ":/", *(f":(top,exclude){p}" for p in ignore)] if ignore else []
    dirty = _git("status", "--porcelain", "--untracked-files=no", *paths)
    return rev + ("+dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    """Versions of everything that can change a result."""
    import numpy as np
    import PIL
    import torch
    import torchvision

    v = {"python": platform.python_version(), "torch": torch.__version__,
         "torchvision": torchvision.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
         "cuda": str(torch.version.cuda), "platform": platform.platform()}
    try:
        import webdataset

        v["webdataset"] = getattr(webdataset, "__version__", "unknown")
    except ImportError:
        pass
    return v


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``platform.processor()`` where /proc/cpuinfo is missing)."""
    try:
        with open(cpuinfo) as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine() -> str:
    """The machine in one phrase: CPU model, core count, operating system."""
    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"
