-- One contract for a job, whichever way it comes in. A Supabase client's insert (the insert guard)
-- and the API (queue.check_job before it reads the input, then queue.enqueue) get the same rules
-- from the same functions:
--
--   queue.job_settings       the deployment's defaults, one row: max attempts and the fleet's
--                            model; the API writes them at start-up and `stemfleet db migrate`
--                            after migrating (STEMFLEET_MAX_ATTEMPTS, STEMFLEET_MODEL)
--   queue.params_problem     the params a job may carry and their ranges (null when fine)
--   queue.job_params         params with every default written in (the model included), so a
--                            job records what it ran with, and deduplication compares like with like
--   queue.input_key_problem  the key rule (queue.object_key_problem) and ownership: a user's job
--                            names one of their own uploads, inputs/<their id>/...
--   queue.require_served_model  the model is one the fleet serves (queue.served_models)
--   queue.check_job          all of the above: the checked params with defaults, or an error:
--                            42501 for the input key (as before), SF005 for params, SF004 for the
--                            model
--
-- Priority comes from the kind (queue.default_priority) on both paths; neither lets a user choose.

create table queue.job_settings (
    id boolean primary key default true check (id),
    max_attempts integer not null default 3 check (max_attempts between 1 and 100),
    -- null until a deployment records its model: a job without one then runs on the worker's
    model text check (model ~ '^[A-Za-z0-9_.-]{1,64}$'),
    updated_at timestamptz not null default now()
);

comment on table queue.job_settings is
    'The defaults of a new job (one row), written from STEMFLEET_MAX_ATTEMPTS / STEMFLEET_MODEL by the API at start-up and by stemfleet db migrate.';

insert into queue.job_settings default values;

create function queue.configure_jobs(p_max_attempts integer, p_model text)
returns queue.job_settings
language sql as $$
    update queue.job_settings
       set max_attempts = p_max_attempts, model = p_model, updated_at = now()
     returning *
$$;

create function queue.default_max_attempts() returns integer
language sql stable set search_path = '' as $$
    select max_attempts from queue.job_settings
$$;

-- The params of app/params.py's JobParams, strictly typed as JSON: a number is a number, a whole
-- number is written without a fraction. tests/test_job_rules.py proves both agree.
create function queue.params_problem(p_params jsonb) returns text
language plpgsql immutable set search_path = '' as $$
declare
    c_stems constant text[] := array['drums', 'bass', 'other', 'vocals', 'guitar', 'piano'];
    c_names constant text := 'model, stems, two_stems, format, sample_format, bitrate, segment, '
                             'shifts, overlap';
    v_key text;
    v_value jsonb;
    v_type text;
    v_number numeric;
    v_format text := coalesce(p_params ->> 'format', 'wav');
    v_low integer;
    v_high integer;
begin
    if p_params is null or pg_catalog.jsonb_typeof(p_params) <> 'object' then
        return 'params must be a JSON object';
    end if;
    for v_key, v_value in select e.key, e.value from pg_catalog.jsonb_each(p_params) e
                                order by e.key loop
        v_type := pg_catalog.jsonb_typeof(v_value);
        v_number := case when v_type = 'number' then (v_value #>> '{}')::numeric end;
        if v_type = 'null' and v_key in ('model', 'stems', 'two_stems', 'bitrate', 'segment') then
            continue;  -- the default
        end if;
        case v_key
        when 'model' then
            if v_type <> 'string' or (v_value #>> '{}') !~ '^[A-Za-z0-9_.-]{1,64}$' then
                return 'model must be a Demucs model name such as htdemucs or htdemucs_ft';
            end if;
        when 'stems' then
            if v_type <> 'array' then
                return 'stems must be a list of stem names';
            elsif pg_catalog.jsonb_array_length(v_value) = 0 then
                return 'stems must name at least one stem';
            elsif exists (select 1 from pg_catalog.jsonb_array_elements(v_value) s
                           where pg_catalog.jsonb_typeof(s) <> 'string'
                              or not (s #>> '{}') = any (c_stems)) then
                return pg_catalog.format('stems: unknown stems %s; choose from %s',
                                         v_value, pg_catalog.array_to_string(c_stems, ', '));
            elsif (select pg_catalog.count(distinct s) from pg_catalog.jsonb_array_elements(v_value) s)
                  <> pg_catalog.jsonb_array_length(v_value) then
                return 'stems must not repeat';
            end if;
        when 'two_stems' then
            if v_type <> 'string' or not (v_value #>> '{}') = any (c_stems) then
                return pg_catalog.format('two_stems: unknown stem %s; choose from %s',
                                         v_value, pg_catalog.array_to_string(c_stems, ', '));
            end if;
        when 'format' then
            if v_type <> 'string' or (v_value #>> '{}') not in ('wav', 'flac', 'mp3', 'opus') then
                return 'format must be one of wav, flac, mp3, opus';
            end if;
        when 'sample_format' then
            if v_type <> 'string' or (v_value #>> '{}') not in ('int16', 'int24', 'float32') then
                return 'sample_format must be one of int16, int24, float32';
            end if;
        when 'bitrate' then
            if v_type <> 'number' or (v_value #>> '{}') !~ '^-?[0-9]+$' then
                return 'bitrate must be a whole number of kbps';
            end if;
        when 'segment' then
            if v_number is null or not (v_number > 0.5 and v_number <= 60) then
                return 'segment must be a number of seconds greater than 0.5, at most 60';
            end if;
        when 'shifts' then
            if v_type <> 'number' or (v_value #>> '{}') !~ '^-?[0-9]+$'
               or not v_number between 0 and 20 then
                return 'shifts must be a whole number from 0 to 20';
            end if;
        when 'overlap' then
            if v_number is null or not (v_number >= 0 and v_number < 1) then
                return 'overlap must be a number from 0 up to (not including) 1';
            end if;
        else
            return pg_catalog.format('%s is not a param a job takes; they are: %s', v_key, c_names);
        end case;
    end loop;
    if pg_catalog.jsonb_typeof(p_params -> 'stems') = 'array'
       and pg_catalog.jsonb_typeof(p_params -> 'two_stems') = 'string' then
        return 'give either stems or two_stems, not both';
    end if;
    if pg_catalog.jsonb_typeof(p_params -> 'bitrate') = 'number' then
        if v_format not in ('mp3', 'opus') then
            return pg_catalog.format('bitrate applies to mp3 and opus, not %s', v_format);
        end if;
        select lo, hi into v_low, v_high
          from (values ('mp3', 32, 320), ('opus', 6, 510)) as r (f, lo, hi) where f = v_format;
        if not (p_params ->> 'bitrate')::numeric between v_low and v_high then
            return pg_catalog.format('bitrate for %s must be %s-%s kbps', v_format, v_low, v_high);
        end if;
    end if;
    if v_format = 'flac' and p_params ->> 'sample_format' = 'float32' then
        return 'flac stores int16 or int24 samples, not float32';
    end if;
    return null;
end;
$$;

create function queue.job_params(p_params jsonb) returns jsonb
language sql stable set search_path = '' as $$
    select pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'model', (select model from queue.job_settings),
               'format', 'wav', 'sample_format', 'int16', 'shifts', 1, 'overlap', 0.25))
           || pg_catalog.jsonb_strip_nulls(coalesce(p_params, '{}'::jsonb))
$$;

create function queue.input_key_problem(p_user_id uuid, p_key text) returns text
language sql stable set search_path = '' as $$
    select coalesce(
        queue.object_key_problem(p_key),
        case when p_user_id is null
                  or pg_catalog.split_part(p_key, '/', 1) <> 'inputs'
                  or pg_catalog.split_part(p_key, '/', 2) <> p_user_id::text
                  or pg_catalog.split_part(p_key, '/', 3) = ''
             then 'not under inputs/<your user id>/' end)
$$;

create function queue.require_served_model(p_params jsonb) returns void
language plpgsql stable set search_path = '' as $$
begin
    if pg_catalog.jsonb_typeof(p_params -> 'model') is distinct from 'string' then
        return;  -- no model (the worker's), or not a name: queue.params_problem says why
    end if;
    perform 1 from queue.served_models where name = p_params ->> 'model';
    if not found then
        raise exception 'model % is not served by this fleet; choose one of: %',
              pg_catalog.quote_literal(p_params ->> 'model'),
              (select pg_catalog.string_agg(name, ', ' order by name) from queue.served_models)
              using errcode = 'SF004',
                    hint = 'leave params.model out to use the fleet''s default model';
    end if;
end;
$$;

create function queue.check_job(p_user_id uuid, p_params jsonb, p_input_key text default null)
returns jsonb
language plpgsql stable set search_path = '' as $$
declare
    v_problem text;
    v_params jsonb;
begin
    if p_input_key is not null then
        v_problem := queue.input_key_problem(p_user_id, p_input_key);
        if v_problem is not null then
            raise exception 'input_key % is not one of your uploads (%)',
                  pg_catalog.quote_literal(p_input_key), v_problem
                  using errcode = '42501',
                        hint = pg_catalog.format(
                            'upload the file under inputs/%s/ first (Supabase Storage, bucket '
                            'stemfleet), or get an upload URL from POST /v1/uploads', p_user_id);
        end if;
    end if;
    v_problem := queue.params_problem(p_params);
    if v_problem is not null then
        raise exception 'invalid params: %', v_problem using errcode = 'SF005';
    end if;
    v_params := queue.job_params(p_params);
    perform queue.require_served_model(v_params);
    return v_params;
end;
$$;

-- The served-model check of every insert (the service connection's too), through the one rule.
create or replace function queue.model_guard() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
    perform queue.require_served_model(new.params);
    return new;
end;
$$;

-- A Supabase client's insert: the job's rules, then every queue-owned column reset.
create or replace function queue.user_insert_guard() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
    if current_setting('role') not in ('anon', 'authenticated') then
        return new;
    end if;
    new.params := queue.check_job(auth.uid(), new.params, new.input_key);
    new.user_id := auth.uid();
    new.status := 'queued';
    new.priority := queue.default_priority(new.kind);
    new.output := null;
    new.progress := 0;
    new.attempts := 0;
    new.max_attempts := queue.default_max_attempts();
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

-- The API's insert: max attempts from the deployment's setting unless the caller names them.
create or replace function queue.enqueue(
    p_user_id uuid,
    p_input_key text,
    p_kind public.job_kind default 'separate',
    p_params jsonb default '{}'::jsonb,
    p_priority integer default null,
    p_input_sha256 text default null,
    p_duration_s double precision default null,
    p_callback_url text default null,
    p_idempotency_key text default null,
    p_max_attempts integer default null,
    p_now timestamptz default null
) returns queue.enqueue_result
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_job public.jobs;
begin
    insert into public.jobs (user_id, kind, priority, params, input_key, input_sha256, duration_s,
                             callback_url, idempotency_key, max_attempts, run_after, created_at,
                             updated_at)
    values (p_user_id, p_kind, coalesce(p_priority, queue.default_priority(p_kind)),
            coalesce(p_params, '{}'::jsonb), p_input_key, p_input_sha256, p_duration_s,
            p_callback_url, p_idempotency_key,
            coalesce(p_max_attempts, queue.default_max_attempts()), v_now, v_now, v_now)
    on conflict on constraint jobs_idempotency_key_per_user do nothing
    returning * into v_job;
    if found then
        return row(true, v_job)::queue.enqueue_result;
    end if;
    select * into v_job from public.jobs
     where user_id = p_user_id and idempotency_key = p_idempotency_key;
    return row(false, v_job)::queue.enqueue_result;
end;
$$;

revoke all on table queue.job_settings from public, anon, authenticated;
grant all on table queue.job_settings to service_role;
revoke all on function queue.configure_jobs(integer, text), queue.default_max_attempts(),
    queue.params_problem(jsonb), queue.job_params(jsonb), queue.input_key_problem(uuid, text),
    queue.require_served_model(jsonb), queue.check_job(uuid, jsonb, text)
    from public, anon, authenticated;
grant execute on function queue.configure_jobs(integer, text), queue.default_max_attempts(),
    queue.params_problem(jsonb), queue.job_params(jsonb), queue.input_key_problem(uuid, text),
    queue.require_served_model(jsonb), queue.check_job(uuid, jsonb, text)
    to service_role;
