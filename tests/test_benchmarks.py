"""The GPU check script (benchmarks/gpu_check.sh), run on the CPU as its smoke test: it must work
on the machine that gets a GPU with nothing to fix there, and its torch path of LB-NLM must agree
with numpy's."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_the_cpu_and_its_device_path_agrees_with_numpy():
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    args = ["--lbnlm-side", "128", "--models", "vdsr:vdsr-tiny", "--epochs", "1",
            "--patience", "1", "--lr-shape", "320x384", "--cpu-crop", "32"]
    done = subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          env={**os.environ, "PY": sys.executable, "CUDA_VISIBLE_DEVICES": ""},
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "device: none (CPU run)" in out
    rows = {name: (float(top), float(p99)) for name, top, p99 in re.findall(
        r"^\| (default|exact) \| .* \| ([0-9.e+-]+) \| ([0-9.e+-]+) \|$", out, re.M)}
    assert set(rows) == {"default", "exact"}, out
    # The torch path (on the CPU here) and numpy compute the same filter in float32: all but a
    # patch whose two nearest categories tie in float32 (either path may take either) agree.
    assert all(p99 < 1e-3 and top < 1e-2 for top, p99 in rows.values()), rows
    assert re.search(r"^\| vdsr:vdsr-tiny \| [0-9.]+ \| 1 \| [+-][0-9.]+ \|", out, re.M), out
    assert "paired LB-NLM (CPU) out-of-sample ΔPSNR" in out
