"""The container build holds together: the Dockerfile's slim API target and CUDA worker target,
the commands and settings they run with, and .dockerignore letting every copied path reach the
build context."""

from __future__ import annotations

import json
import re

from app.settings import load_settings
from tests.deploy_support import (
    ROOT,
    assert_cli_command,
    assert_known_settings,
    dockerfile_env,
    dockerfile_stages,
    dockerignore_patterns,
    ignored,
)


def test_dockerfile_has_a_slim_api_target_and_a_cuda_worker_target() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"api", "worker", "gpu-worker"}

    api = stages["api"]
    assert api.base.startswith("python:") and "slim" in api.base
    api_runs = " ".join(api.args("RUN"))
    assert re.search(r"pip install \.(\s|&&|$)", api_runs), "the api installs the base package"
    for heavy in ("torch", "demucs", "[worker]", "nvidia", "cuda"):
        assert heavy not in api_runs, f"{heavy} in the api image"
    assert json.loads(api.args("CMD")[-1]) == ["stemfleet", "api"]
    assert_cli_command(json.loads(api.args("CMD")[-1]))

    worker = stages["worker"]
    assert worker.base.startswith("nvidia/cuda:")
    worker_runs = worker.args("RUN")
    assert "pip install ${TORCH_SPEC}" in worker_runs, "torch comes from TORCH_SPEC only"
    args = dict(a.partition("=")[::2] for a in worker.args("ARG"))
    assert re.search(r"/whl/cu\d+$", args["TORCH_INDEX"]), "torch built for CUDA by default"
    assert args["TORCH_SPEC"] == '"torch==${TORCH_VERSION} --index-url ${TORCH_INDEX}"'
    # torch is installed before the package, so pip never resolves torch itself
    order = [i for i, r in enumerate(worker_runs) if "TORCH_SPEC" in r or '".[worker]"' in r]
    assert len(order) == 2 and order[0] < order[1]
    fetch = next(r for r in worker_runs if "scripts/fetch_model.py" in r)
    assert "--dest /models" in fetch and "--random-weights" not in fetch
    env = dockerfile_env("worker")
    assert env["STEMFLEET_MODEL_REPO"] == "/models"
    assert env["HF_HUB_OFFLINE"] == "1", "a cold start never waits on the hub"
    assert json.loads(worker.args("CMD")[-1]) == ["stemfleet", "worker"]
    assert_cli_command(json.loads(worker.args("CMD")[-1]))

    gpu = stages["gpu-worker"]
    assert gpu.base == "worker", "the GPU worker is the worker image, checked and configured"
    check = " ".join(gpu.args("RUN"))
    assert "torch.version.cuda" in check and "sys.exit" in check, "no CPU torch in a GPU image"
    gpu_env = dockerfile_env("gpu-worker")
    assert gpu_env["STEMFLEET_DEVICE"] == "cuda" and gpu_env["STEMFLEET_REQUIRE_GPU"] == "true"
    assert load_settings(device="cuda", require_gpu=True).require_gpu
    assert_known_settings(gpu_env, "Dockerfile gpu-worker")
    assert json.loads(gpu.args("CMD")[-1]) == ["stemfleet", "worker"]

    for stage in (s for s in stages.values() if s.base not in stages):
        assert stage.args("USER") == ["stemfleet"], "images run unprivileged"
        env = dockerfile_env(stage.name)
        # `pip install .` puts the code in site-packages: migrations are read from the copy
        assert env["STEMFLEET_MIGRATIONS_DIR"] == "/app/supabase/migrations"
        assert "supabase/migrations ./supabase/migrations" in stage.args("COPY")
        assert_known_settings(env, f"Dockerfile {stage.name}")


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for stage in dockerfile_stages().values():
        for copy_args in stage.args("COPY"):
            *sources, _dest = copy_args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                files = (
                    [ROOT / source]
                    if (ROOT / source).is_file()
                    else [p for p in (ROOT / source).rglob("*") if p.is_file()]
                )
                kept = [f for f in files if not ignored(str(f.relative_to(ROOT)), patterns)]
                assert kept, f"COPY {source}: everything is excluded by .dockerignore"
                if (ROOT / source).is_file():
                    assert kept == files, f"COPY {source} is excluded by .dockerignore"
    for heavy in (".git", ".venv", "tests", "bench", "models/htdemucs.yaml", "x/__pycache__/a.pyc"):
        assert ignored(heavy, patterns), f"{heavy} would be sent to the builder"
