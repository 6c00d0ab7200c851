-- Who may do what. Supabase grants everything in `public` to anon / authenticated by default
-- privileges, so every grant here starts from a revoke.
--
--   anon           nothing at all
--   authenticated  insert queued jobs for themself, read their own jobs, cancel their own
--                  queued / running job through public.cancel_job()
--   service_role   everything (bypasses RLS); the API, workers and scaler connect as it

-- Users may not forge queue-owned columns: whatever they send, these are reset. And a job must
-- name one of the user's own uploads (inputs/<their id>/...): otherwise a user could point a job
-- at somebody else's input and read its stems from their own job's outputs. The API applies the
-- same rule (app.storage.user_owns_input); service connections are not restricted here.
-- SECURITY DEFINER so it may call queue.* (users have no usage on that schema); the caller's role
-- is read from the `role` setting, which SET ROLE (as PostgREST does) sets and a definer keeps.
create function queue.user_insert_guard() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
    v_user text := auth.uid()::text;
begin
    if current_setting('role') not in ('anon', 'authenticated') then
        return new;
    end if;
    if v_user is null
       or new.input_key is null
       or pg_catalog.split_part(new.input_key, '/', 1) <> 'inputs'
       or pg_catalog.split_part(new.input_key, '/', 2) <> v_user
       or pg_catalog.split_part(new.input_key, '/', 3) = ''
       or new.input_key ~ '(^|/)\.{1,2}(/|$)' then
        raise exception 'input_key % is not one of your uploads',
              pg_catalog.quote_literal(new.input_key)
              using errcode = '42501',
                    hint = pg_catalog.format(
                        'upload the file under inputs/%s/ first (Supabase Storage, bucket '
                        'stemfleet), or get an upload URL from POST /v1/uploads', v_user);
    end if;
    new.user_id := auth.uid();
    new.status := 'queued';
    new.priority := queue.default_priority(new.kind);
    new.output := null;
    new.progress := 0;
    new.attempts := 0;
    new.max_attempts := 3;
    new.run_after := pg_catalog.now();
    new.lease_expires_at := null;
    new.worker_id := null;
    new.error := null;
    new.error_kind := null;
    new.timings := '{}'::jsonb;
    new.duration_s := null;
    new.created_at := pg_catalog.now();
    new.started_at := null;
    new.finished_at := null;
    new.updated_at := pg_catalog.now();
    new.id := pg_catalog.gen_random_uuid();
    return new;
end;
$$;

create trigger jobs_user_insert_guard before insert on public.jobs
    for each row execute function queue.user_insert_guard();

alter table public.jobs enable row level security;
alter table public.workers enable row level security;

create policy jobs_select_own on public.jobs
    for select to authenticated
    using (user_id = (select auth.uid()));

create policy jobs_insert_own on public.jobs
    for insert to authenticated
    with check (user_id = (select auth.uid()) and status = 'queued');

revoke all on public.jobs from public, anon, authenticated;
revoke all on public.workers from public, anon, authenticated;
grant select, insert on public.jobs to authenticated;
grant all on public.jobs, public.workers to service_role;

-- The one write a user may make after insert.
create function public.cancel_job(p_job_id uuid) returns public.jobs
language plpgsql security definer set search_path = '' as $$
declare
    v_owner uuid;
begin
    select user_id into v_owner from public.jobs where id = p_job_id;
    if v_owner is null or v_owner is distinct from auth.uid() then
        -- Somebody else's job does not exist, as far as this caller can tell.
        raise exception 'job % not found', p_job_id using errcode = 'SF002';
    end if;
    return queue.cancel(p_job_id, 'cancelled by user');
end;
$$;

revoke all on function public.cancel_job(uuid) from public, anon;
grant execute on function public.cancel_job(uuid) to authenticated, service_role;

-- queue.* and admin.* are not exposed to users at all.
revoke all on schema queue from public, anon, authenticated;
revoke all on schema admin from public, anon, authenticated;
revoke all on all functions in schema queue from public, anon, authenticated;
grant usage on schema queue, admin to service_role;
grant execute on all functions in schema queue to service_role;
