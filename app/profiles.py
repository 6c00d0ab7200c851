"""Folder profiles for `stemfleet process PROFILE`: a YAML file of named source folders, each with
the separation options and where its stems go.

```yaml
api_url: https://stems.example.com   # optional: the API remote profiles use (or STEMFLEET_API_URL)
profiles:
  - name: h4n
    source_folder: /Volumes/H4N_SD/STEREO
    glob: "*.wav"                      # or a list; matched case-insensitively on file names
    recursive: false                   # also look in subfolders
    model: htdemucs
    stems: [vocals, drums]             # or two_stems: vocals
    format: opus                       # wav | flac | mp3 | opus
    bitrate: 192                       # kbps, mp3 / opus
    destination: ~/media/h4n           # stems land in <destination>/<file stem>/<stem>.<ext>
    remote: false                      # true: the deployed API; false: this machine
```

`format` and `bitrate` may also sit under `output:` (the shape of stemset's config). Relative
folders are relative to the YAML file.

How "already processed" is remembered, by content hash (sha256, so a renamed file is not done
twice and an edited one is done again):

- local profiles (`remote: false`) run on this machine's system (the embedded default, or the
  database STEMFLEET_DATABASE_URL names) and record each finished file in the table
  `public.profile_files` (profile, sha256) through `queue.record_profile_file`, once its stems
  are written to the destination;
- remote profiles talk to a deployed API, whose database the CLI cannot reach. There the jobs
  table is the record: every job carries its input's sha256, so before uploading anything the
  CLI lists the user's succeeded jobs through the API and skips a file whose hash was already
  separated with the same options. (Jobs that an operator prunes are forgotten, and their files
  are processed again on the next run.)
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.audio_probe import EXTENSIONS
from app.errors import ConfigError, PermanentJobError
from app.params import JobParams, OutputFormat, parse_params

DEFAULT_CONFIG_NAME = "stemfleet.yaml"
AUDIO_PATTERNS = tuple(f"*.{ext}" for ext in EXTENSIONS)  # every accepted format's extensions
_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN)
    source_folder: Path
    glob: list[str] = Field(default_factory=lambda: list(AUDIO_PATTERNS))
    recursive: bool = False
    model: str | None = None
    stems: list[str] | None = None
    two_stems: str | None = None
    format: OutputFormat = "wav"
    bitrate: int | None = None
    destination: Path
    remote: bool = False
    api_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _flatten_output(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("output"), dict):
            data = dict(data)
            output = data.pop("output")
            for key in ("format", "bitrate"):
                if key in output:
                    data.setdefault(key, output[key])
            unknown = set(output) - {"format", "bitrate"}
            if unknown:
                raise ValueError(f"output: unknown keys {sorted(unknown)} (use format, bitrate)")
        return data

    @field_validator("glob", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _valid_params(self) -> Profile:
        try:
            self.job_params()  # the same checks the API and the worker apply
        except PermanentJobError as exc:
            raise ValueError(str(exc).removeprefix("invalid params: ")) from None
        return self

    def job_params(self) -> JobParams:
        raw = {
            "model": self.model,
            "stems": self.stems,
            "two_stems": self.two_stems,
            "format": self.format,
            "bitrate": self.bitrate,
        }
        return parse_params({k: v for k, v in raw.items() if v is not None})

    def source_files(self) -> list[Path]:
        """Files in the source folder matching the glob, sorted by path."""
        if not self.source_folder.is_dir():
            raise ConfigError(
                f"profile {self.name!r}: source folder {self.source_folder} does not exist or is "
                "not a folder (is the card or drive mounted?); fix source_folder in the config"
            )
        patterns = [p.lower() for p in self.glob]
        found = [
            path
            for path in _walk(self.source_folder, self.recursive)
            if any(fnmatch.fnmatchcase(path.name.lower(), p) for p in patterns)
        ]
        return sorted(found)


def _walk(folder: Path, recursive: bool) -> Iterator[Path]:
    if not recursive:
        yield from (p for p in folder.iterdir() if p.is_file())
        return
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root) / f for f in files)


class ProfilesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_url: str | None = None
    profiles: list[Profile]

    @field_validator("profiles")
    @classmethod
    def _unique(cls, value: list[Profile]) -> list[Profile]:
        names = [p.name for p in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"profile names must be unique; repeated: {repeated}")
        return value

    def get(self, name: str) -> Profile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        known = ", ".join(p.name for p in self.profiles) or "none"
        raise ConfigError(f"no profile named {name!r} in the config (profiles: {known})")


def find_config(explicit: Path | None, settings_file: Path | None) -> Path:
    """--config, else STEMFLEET_PROFILES_FILE, else ./stemfleet.yaml."""
    path = explicit or settings_file or Path.cwd() / DEFAULT_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(
            f"no profiles config at {path}: write one (see `stemfleet process --help`) or "
            "point --config / STEMFLEET_PROFILES_FILE at it"
        )
    return path


def load_profiles(path: Path) -> ProfilesConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read profiles config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"profiles config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"profiles config {path} must be a mapping with a `profiles:` list")
    base = path.resolve().parent
    try:
        config = ProfilesConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(data, err['loc'])}: {str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise ConfigError(f"profiles config {path}: {problems}") from None
    resolved = [
        p.model_copy(
            update={
                "source_folder": _resolve(base, p.source_folder),
                "destination": _resolve(base, p.destination),
            }
        )
        for p in config.profiles
    ]
    return config.model_copy(update={"profiles": resolved})


def _resolve(base: Path, path: Path) -> Path:
    expanded = path.expanduser()
    return expanded if expanded.is_absolute() else base / expanded


def _location(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """`profiles[h4n].bitrate` rather than `profiles.0.bitrate`."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            name = node[item].get("name") if isinstance(node[item], dict) else None
            parts[-1] += f"[{name or item}]"
            node = node[item]
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "config"


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
