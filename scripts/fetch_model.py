"""Download a Demucs model with Demucs' own loader and save it as a local model folder.

The worker image runs this at build time, so a cold start loads weights from disk and never waits
on the hub:

    python scripts/fetch_model.py --model htdemucs --dest /models
    STEMFLEET_MODEL=htdemucs STEMFLEET_MODEL_REPO=/models stemfleet worker

The folder uses the layout of Demucs' `LocalRepo` (what `demucs -n NAME --repo DIR` and
`demucs.pretrained.get_model(NAME, repo=DIR)` read): one `<sig>-<sha256[:8]>.th` per model of the
bag (the checksum is verified on load) and `<name>.yaml` listing the signatures, weights and
segment.

`--random-weights` builds the released architecture with random weights instead of downloading:
the same layers and FLOPs, so it serves benchmarks and offline tests (stems come out as noise).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from demucs.apply import BagOfModels
from demucs.htdemucs import HTDemucs
from demucs.pretrained import REMOTE_ROOT, SOURCES, get_model
from demucs.states import get_state

# The released htdemucs (signature 955717e8) as trained. It is a run of Demucs' own `mmi` grid
# (demucs/grids/mmi_ft.py fine-tunes signature 955717e8 from it), whose every run sets
# `htdemucs.dconv_mode: 3` (dilated-conv branches in the encoder AND the decoder), `depth: 4`,
# `t_layers: 5`; of its t_layers x bottom_channels runs only `bottom_channels: 512` fits the
# released file. Over HTDemucs' defaults that is 41,984,456 parameters; saved in half precision
# it is 84,131,413 bytes, and the released file is 84,141,911 (the ~10 kB more is the
# `training_args` Demucs' `serialize_model` stores). With `dconv_mode: 1` (HTDemucs' default,
# used here before 2026-11-30) it would be 41,473,616 parameters and 83,067,061 bytes: 1.07 MB
# short. Segments are 7.8 s (demucs/remote/htdemucs.yaml names the one member, 955717e8).
HTDEMUCS_KWARGS: dict[str, Any] = {
    "sources": SOURCES,
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": Fraction(39, 5),
    "channels": 48,
    "depth": 4,
    "nfft": 4096,
    "bottom_channels": 512,
    "t_layers": 5,
    "t_heads": 8,
    "t_hidden_scale": 4.0,
    "dconv_mode": 3,
    "dconv_depth": 2,
    "dconv_comp": 8,
}


def random_weights_model(name: str, seed: int = 0) -> BagOfModels:
    """The named architecture with random weights (no download)."""
    torch.manual_seed(seed)
    model: Any
    if name == "htdemucs":
        model = HTDemucs(**HTDEMUCS_KWARGS)
    elif name == "demucs_unittest":
        model = get_model("demucs_unittest")  # Demucs builds this tiny HDemucs locally
    else:
        raise SystemExit(
            f"--random-weights knows htdemucs and demucs_unittest, not {name!r}: "
            "drop --random-weights to download the real weights"
        )
    model.eval()
    return BagOfModels([model])


def download(name: str) -> BagOfModels:
    """Through Demucs' own loader: the Hugging Face hub, then Demucs' legacy remote repo."""
    model = get_model(name)
    return model if isinstance(model, BagOfModels) else BagOfModels([model])


def upstream_signatures(name: str, count: int) -> list[str] | None:
    """The signatures Demucs' own bag file gives these models, so the folder reads like upstream."""
    bag_file = REMOTE_ROOT / f"{name}.yaml"
    if not bag_file.is_file():
        return None
    signatures = [str(sig) for sig in yaml.safe_load(bag_file.read_text())["models"]]
    return signatures if len(signatures) == count else None


def init_arguments(model: torch.nn.Module) -> tuple[Any, dict[str, Any]]:
    """What the model was built with, as Demucs' capture_init recorded it."""
    args, kwargs = vars(model)["_init_args_kwargs"]
    return args, kwargs


def serialize(model: torch.nn.Module) -> bytes:
    """A Demucs package (klass, args, kwargs, state), in half precision like upstream's files."""
    args, kwargs = init_arguments(model)
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": get_state(model, None, half=True),
    }
    buffer = io.BytesIO()
    torch.save(package, buffer)
    return buffer.getvalue()


def save_local_repo(
    name: str, bag: BagOfModels, dest: Path, *, source: str | None = None
) -> list[Path]:
    """Write `<sig>-<checksum>.th` per model and `<name>.yaml`; returns the files written.
    `source` is the upstream model name when it differs from `name`."""
    dest.mkdir(parents=True, exist_ok=True)
    blobs = [serialize(model) for model in bag.models]
    signatures = upstream_signatures(source or name, len(blobs)) or [
        hashlib.sha256(blob).hexdigest()[:8] for blob in blobs
    ]
    written: list[Path] = []
    for sig, blob in zip(signatures, blobs, strict=True):
        for stale in dest.glob(f"{sig}*.th"):  # LocalRepo refuses two files for one signature
            stale.unlink()
        path = dest / f"{sig}-{hashlib.sha256(blob).hexdigest()[:8]}.th"
        path.write_bytes(blob)
        written.append(path)
    bag_spec: dict[str, Any] = {"models": signatures, "weights": bag.weights}
    first: Any = bag.models[0]
    trained_segment = init_arguments(first)[1].get("segment")
    if trained_segment is not None and float(first.segment) != float(trained_segment):
        bag_spec["segment"] = float(first.segment)
    bag_file = dest / f"{name}.yaml"
    bag_file.write_text(yaml.safe_dump(bag_spec, sort_keys=False))
    written.append(bag_file)
    return written


def verify(name: str, dest: Path, expected: BagOfModels) -> None:
    """Load the folder back the way the worker will, and compare every weight."""
    loaded = get_model(name, repo=dest)
    loaded_models = loaded.models if isinstance(loaded, BagOfModels) else [loaded]
    if len(loaded_models) != len(expected.models):
        raise SystemExit(f"{dest}: {len(loaded_models)} models, expected {len(expected.models)}")
    for mine, theirs in zip(loaded_models, expected.models, strict=True):
        for (key, value), other in zip(
            mine.state_dict().items(), theirs.state_dict().values(), strict=True
        ):
            if not torch.equal(value, other.to(torch.half).to(value.dtype)):
                raise SystemExit(f"{dest}: weight {key} differs after saving; delete and retry")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="htdemucs", help="Demucs model name (default htdemucs)")
    parser.add_argument("--dest", type=Path, required=True, help="the local model folder")
    parser.add_argument(
        "--name",
        help="save the bag under this name (default: --model); the worker's STEMFLEET_MODEL",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="same architecture, random weights, no download (benchmarks, offline tests)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
    args = parser.parse_args(argv)

    bag = (
        random_weights_model(args.model, args.seed) if args.random_weights else download(args.model)
    )
    name = args.name or args.model
    if name == "demucs_unittest":
        raise SystemExit(
            "Demucs builds demucs_unittest itself and never reads it from a folder: "
            "save it under another --name"
        )
    written = save_local_repo(name, bag, args.dest, source=args.model)
    verify(name, args.dest, bag)
    parameters = sum(p.numel() for p in bag.parameters())
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"{name}: {len(bag.models)} model(s), {parameters / 1e6:.2f} M parameters, verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
