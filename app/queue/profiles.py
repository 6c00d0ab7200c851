"""Folder profiles: which files a profile has already processed (public.profile_files)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from app.db import Connection
from app.queue.base import SqlCaller

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


PROFILE_FILE = class_row(ProfileFile)


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
        return self._made(
            conn,
            PROFILE_FILE,
            Q_RECORD_PROFILE_FILE,
            {
                "profile": profile,
                "sha256": sha256,
                "source_path": source_path,
                "job_id": job_id,
                "outputs": Jsonb(outputs),
            },
        )

    def profile_files_processed(
        self, conn: Connection, profile: str, sha256s: list[str]
    ) -> set[str]:
        rows = self._all(conn, Q_PROFILE_FILES_PROCESSED, {"profile": profile, "sha256s": sha256s})
        return {r["sha256"] for r in rows}
