"""Per-job options (jobs.params), typed for the API's parsing and the worker.

The rules of params live in SQL (queue.params_problem, queue.job_params): both insert paths, the
API and a Supabase client's insert, go through them. This model is strict (a JSON number is not
a string) like SQL, and tests/test_job_rules.py proves the two agree on what is valid and on the
defaults. The worker parses again, so a row that predates the rules fails at once with the
validation message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from app.errors import PermanentJobError

OutputFormat = Literal["wav", "flac", "mp3", "opus"]
SampleFormat = Literal["int16", "int24", "float32"]

KNOWN_STEMS = ("drums", "bass", "other", "vocals", "guitar", "piano")
# Demucs' pretrained models (a model folder in STEMFLEET_MODEL_REPO may add others)
KNOWN_MODELS = (
    "htdemucs",
    "htdemucs_ft",
    "htdemucs_6s",
    "hdemucs_mmi",
    "mdx",
    "mdx_extra",
    "mdx_q",
    "mdx_extra_q",
    "demucs_unittest",
)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def matching(pattern: re.Pattern[str], message: str) -> AfterValidator:
    """A text field's rule (in `Annotated[str, ...]`): `pattern` matches it, else `message`."""

    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


ModelName = Annotated[
    str, matching(_MODEL_NAME, "model must be a Demucs model name such as htdemucs or htdemucs_ft")
]

# kbps ranges accepted by the encoders
BITRATE_RANGE = {"mp3": (32, 320), "opus": (6, 510)}
DEFAULT_BITRATE = {"mp3": 320, "opus": 160}


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model: ModelName | None = Field(
        None, description="Demucs model name; default: the fleet's model"
    )
    stems: list[str] | None = Field(None, description="subset of the model's stems to output")
    two_stems: str | None = Field(
        None, description="output this stem and `no_<stem>` (all the others summed)"
    )
    format: OutputFormat = "wav"
    sample_format: SampleFormat = Field("int16", description="wav / flac sample format")
    bitrate: int | None = Field(None, description="kbps for mp3 (32-320) and opus (6-510)")
    segment: float | None = Field(None, gt=0.5, le=60, description="seconds per model segment")
    shifts: int = Field(1, ge=0, le=20, description="random shifts averaged (quality vs time)")
    overlap: float = Field(0.25, ge=0, lt=1, description="overlap between segments")

    @field_validator("stems")
    @classmethod
    def _stems(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("stems must name at least one stem")
        unknown = [s for s in value if s not in KNOWN_STEMS]
        if unknown:
            raise ValueError(f"unknown stems {unknown}; choose from {list(KNOWN_STEMS)}")
        if len(set(value)) != len(value):
            raise ValueError("stems must not repeat")
        return value

    @field_validator("two_stems")
    @classmethod
    def _two_stems(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_STEMS:
            raise ValueError(f"unknown stem {value!r}; choose from {list(KNOWN_STEMS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobParams:
        if self.stems is not None and self.two_stems is not None:
            raise ValueError("give either stems or two_stems, not both")
        if self.bitrate is not None:
            if self.format not in BITRATE_RANGE:
                raise ValueError(f"bitrate applies to mp3 and opus, not {self.format}")
            low, high = BITRATE_RANGE[self.format]
            if not low <= self.bitrate <= high:
                raise ValueError(f"bitrate for {self.format} must be {low}-{high} kbps")
        if self.format == "flac" and self.sample_format == "float32":
            raise ValueError("flac stores int16 or int24 samples, not float32")
        return self

    @property
    def effective_bitrate(self) -> int | None:
        if self.format not in BITRATE_RANGE:
            return None
        return self.bitrate or DEFAULT_BITRATE[self.format]

    @property
    def extension(self) -> str:
        return self.format


def parse_params(raw: object) -> JobParams:
    """Validate jobs.params; a bad value raises PermanentJobError with an actionable message."""
    try:
        return JobParams.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'params'}: "
            f"{str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise PermanentJobError(f"invalid params: {problems}", kind="invalid_params") from None


def model_folder_names(repo: Path) -> list[str]:
    """The models in a local Demucs model folder (STEMFLEET_MODEL_REPO): its <name>.yaml bags
    and <signature>.th single models."""
    return sorted({p.stem.split("-")[0] for p in repo.iterdir() if p.suffix in (".th", ".yaml")})


def fleet_model_names(model: str, repo: Path | None) -> list[str]:
    """What a machine configured with STEMFLEET_MODEL / STEMFLEET_MODEL_REPO can serve, for
    queue.served_models (Demucs' published models are there already)."""
    names = {model}
    if repo is not None and repo.is_dir():
        names.update(model_folder_names(repo))
    return sorted(name for name in names if _MODEL_NAME.match(name))
