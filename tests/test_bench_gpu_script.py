"""bench/gpu.sh, the prepared accelerator sweep, runs end to end in its CPU check mode
(`--device cpu --quick`: htdemucs_tiny, short clips) and writes every results file it
promises: the profile, the sweep and the side-by-side table (with the stemfleet worker row,
the Demucs CLI row and the apply_model row)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_gpu_sh_cpu_quick_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        ["bench/gpu.sh", "--device", "cpu", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    log = (out / "gpu_sh.log").read_text() if (out / "gpu_sh.log").exists() else ""
    assert done.returncode == 0, done.stderr[-3000:] + log[-3000:]
    assert "done: 0 step(s) failed" in done.stderr

    profile = (out / "profile_cpu.md").read_text()
    assert "## Where the time goes" in profile
    for group in ("STFT / iSTFT", "encoder convolutions", "cross-domain transformer"):
        assert f"| {group} |" in profile

    sweep = (out / "gpu_cpu.md").read_text()
    assert "| eager fp32, batch auto |" in sweep and "| eager bf16, batch auto |" in sweep
    assert "## Cross-job batching" in sweep

    side = (out / "separation_cpu.md").read_text()
    for row in ("STEMFLEET_ENGINE=eager", "all clips in one invocation", "`apply_model` loop"):
        assert row in side
    assert "vs CLI (all clips)" in side
