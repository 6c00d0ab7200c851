-- One rule for object keys, the same as app.storage.validate_key: a Supabase-client insert whose
-- input_key the worker would refuse is refused at insert, with the reason.
--
-- queue.object_key_problem(key) is null for a valid key, else why it is not:
--   empty or longer than 1024 characters; absolute ('/...', '\', a drive letter 'C:');
--   control characters; an empty path segment ('//', a trailing '/'); a '.' or '..' segment.

create function queue.object_key_problem(p_key text) returns text
language sql immutable set search_path = '' as $$
    select case
        when p_key is null or p_key = '' or pg_catalog.length(p_key) > 1024
            then 'empty or longer than 1024'
        when p_key like '/%' or pg_catalog.strpos(p_key, E'\\') > 0 or p_key ~ '^[A-Za-z]:'
            then 'must be relative'
        when p_key ~ '[\x01-\x1f]'
            then 'control characters'
        when p_key ~ '(^|/)(/|$)'
            then 'empty path segment'
        when p_key ~ '(^|/)\.{1,2}(/|$)'
            then '''.'' or ''..'' segment'
    end
$$;

create or replace function queue.user_insert_guard() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
    v_user text := auth.uid()::text;
    v_problem text;
begin
    if current_setting('role') not in ('anon', 'authenticated') then
        return new;
    end if;
    v_problem := queue.object_key_problem(new.input_key);
    if v_problem is null
       and (v_user is null
            or pg_catalog.split_part(new.input_key, '/', 1) <> 'inputs'
            or pg_catalog.split_part(new.input_key, '/', 2) <> v_user
            or pg_catalog.split_part(new.input_key, '/', 3) = '') then
        v_problem := 'not under inputs/<your user id>/';
    end if;
    if v_problem is not null then
        raise exception 'input_key % is not one of your uploads (%)',
              pg_catalog.quote_literal(new.input_key), v_problem
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

revoke all on function queue.object_key_problem(text) from public, anon, authenticated;
grant execute on function queue.object_key_problem(text) to service_role;
