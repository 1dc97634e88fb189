"""The device check script runs on CPU (--cpu) so it cannot rot between GPU sessions."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_cpu_smoke(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--cpu", "--steps", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert [x["model"] for x in lines] == ["embedded", "random-mid"]
    for x in lines:
        assert x["metrics_finite"] and x["steps"] == 1 and x["rollout_tokens_per_s"] > 0
    mid = lines[1]  # 128 sequences in micro-batches of 32: four graphs, all kept on the host
    assert mid["graphs_kept"] == 4 and mid["extra_forwards"] == 0 and mid["graphs_MiB"] > 0
    assert out.stdout.strip().endswith("OK")
