-- Folder profiles (`stemfleet process PROFILE`): which source files a profile has already turned
-- into stems, by content hash, so a second run over the same folder processes only new files.
-- A renamed or moved file keeps its hash and is not processed again; an edited file is new.
--
-- Written by the CLI on a service connection (the embedded system's database, or the one
-- STEMFLEET_DATABASE_URL names) once a file's stems are in the profile's destination. Remote
-- profiles, whose CLI cannot reach the fleet's database, rely on the API's jobs instead (see
-- app/profiles.py).

create table public.profile_files (
    profile text not null check (profile ~ '^[A-Za-z0-9_.-]{1,64}$'),
    input_sha256 text not null check (input_sha256 ~ '^[0-9a-f]{64}$'),
    source_path text not null,
    job_id uuid,  -- no foreign key: finished jobs are prunable, the record must outlive them
    outputs jsonb not null default '{}'::jsonb check (jsonb_typeof(outputs) = 'object'),
    processed_at timestamptz not null,
    primary key (profile, input_sha256)
);

comment on table public.profile_files is
    'Files a folder profile has processed (by sha256): `stemfleet process` skips them.';

alter table public.profile_files enable row level security;
revoke all on public.profile_files from public, anon, authenticated;
grant all on public.profile_files to service_role;

-- Record (or re-record, after `process --force`) one processed file.
create function queue.record_profile_file(
    p_profile text,
    p_input_sha256 text,
    p_source_path text,
    p_job_id uuid default null,
    p_outputs jsonb default '{}'::jsonb,
    p_now timestamptz default null
) returns public.profile_files
language sql as $$
    insert into public.profile_files as f (profile, input_sha256, source_path, job_id, outputs,
                                           processed_at)
    values (p_profile, p_input_sha256, p_source_path, p_job_id, coalesce(p_outputs, '{}'::jsonb),
            coalesce(p_now, now()))
    on conflict (profile, input_sha256) do update
       set source_path = excluded.source_path,
           job_id = excluded.job_id,
           outputs = excluded.outputs,
           processed_at = excluded.processed_at
    returning f.*
$$;

-- Which of the given hashes this profile has already processed.
create function queue.profile_files_processed(p_profile text, p_input_sha256s text[])
returns setof text
language sql stable as $$
    select input_sha256 from public.profile_files
     where profile = p_profile and input_sha256 = any (p_input_sha256s)
$$;

revoke all on function queue.record_profile_file(text, text, text, uuid, jsonb, timestamptz),
    queue.profile_files_processed(text, text[]) from public, anon, authenticated;
grant execute on function queue.record_profile_file(text, text, text, uuid, jsonb, timestamptz),
    queue.profile_files_processed(text, text[]) to service_role;
