"""Sample a running process with py-spy while a load runs; print where the time went.

``py_spy_while(pid, action, out)`` records raw (collapsed) stacks of every thread of
``pid`` at 1 kHz while ``action`` runs, writes them to ``out`` and returns the top
functions by own samples and by inclusive samples (the hot paths to look at).
"""
from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable


def py_spy_while(pid: int, action: Callable[[], Any], out: Path, top: int = 18) -> tuple[str, Any]:
    exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
    if not Path(exe).exists():
        return "py-spy not installed (pip install py-spy)", action()
    rec = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw", "--threads",
                            *(["--gil"] if __import__("os").environ.get("PYSPY_GIL") else []), "--nonblocking", "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        res = action()
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(20)
    return summarize(out, top), res


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, loc = frame.partition(" (")
    f = loc.rsplit("/", 1)[-1].split(":")[0]
    return f"{name} ({f})"


def summarize(path: Path, top: int = 18) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    if not path.exists():
        return "no samples"
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        k = int(n)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("thread")]
        frames = [f for f in frames if not f.startswith("process ")]
        if not frames:
            continue
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    lines = [f"{total} samples (all threads, idle included)", "  own time:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["  inclusive:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines)
