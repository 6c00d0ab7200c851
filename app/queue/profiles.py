"""Folder profiles: which files a profile has already processed (public.profile_files)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from app.db import Connection
from app.queue.jobs import SqlCaller

Q_RECORD_PROFILE_FILE = """
select * from queue.record_profile_file(p_profile => %(profile)s,
    p_input_sha256 => %(sha256)s, p_source_path => %(source_path)s, p_job_id => %(job_id)s,
    p_outputs => %(outputs)s, p_now => %(now)s)
"""
Q_PROFILE_FILES_PROCESSED = """
select h as sha256 from queue.profile_files_processed(%(profile)s, %(sha256s)s::text[]) as h
"""


@dataclass(frozen=True, slots=True)
class ProfileFile:
    profile: str
    input_sha256: str
    source_path: str
    job_id: UUID | None
    outputs: dict[str, Any]
    processed_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ProfileFile:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


class ProfileQueries(SqlCaller):
    def record_profile_file(
        self,
        conn: Connection,
        *,
        profile: str,
        sha256: str,
        source_path: str,
        job_id: UUID | str | None,
        outputs: dict[str, str],
    ) -> ProfileFile:
        row = self._one(
            conn,
            Q_RECORD_PROFILE_FILE,
            {
                "profile": profile,
                "sha256": sha256,
                "source_path": source_path,
                "job_id": job_id,
                "outputs": Jsonb(outputs),
            },
        )
        assert row is not None
        return ProfileFile.from_row(row)

    def profile_files_processed(
        self, conn: Connection, profile: str, sha256s: list[str]
    ) -> set[str]:
        rows = self._all(conn, Q_PROFILE_FILES_PROCESSED, {"profile": profile, "sha256s": sha256s})
        return {r["sha256"] for r in rows}
