-- stemfleet queue: jobs, workers and every state change of a job as a SQL function.
--
-- Conventions (River / procrastinate style):
--   * every function takes p_now timestamptz default null and uses coalesce(p_now, now()),
--     so tests inject time instead of sleeping;
--   * finishing functions (complete / fail / release / heartbeat) only touch a row that is still
--     'running' under the same worker and attempt; otherwise they raise SQLSTATE 'SF001'
--     (lease lost). 'SF002' = job not found, 'SF003' = transition not allowed.
--   * NOTIFY payloads carry ids only.

create schema if not exists queue;
create schema if not exists admin;

create type public.job_kind as enum ('separate', 'preview');
create type public.job_status as enum ('queued', 'running', 'succeeded', 'failed', 'cancelled');
create type public.worker_state as enum ('idle', 'busy', 'stopped', 'lost');

create table public.jobs (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null default auth.uid(),
    kind public.job_kind not null default 'separate',
    status public.job_status not null default 'queued',
    priority integer not null default 0,
    params jsonb not null default '{}'::jsonb check (jsonb_typeof(params) = 'object'),
    input_key text not null check (input_key <> ''),
    input_sha256 text check (input_sha256 ~ '^[0-9a-f]{64}$'),
    duration_s double precision check (duration_s >= 0),
    output jsonb,
    progress real not null default 0 check (progress between 0 and 1),
    attempts integer not null default 0 check (attempts >= 0),
    max_attempts integer not null default 3 check (max_attempts between 1 and 100),
    run_after timestamptz not null default now(),
    lease_expires_at timestamptz,
    worker_id uuid,
    error text,
    error_kind text,
    timings jsonb not null default '{}'::jsonb,
    callback_url text check (callback_url is null or callback_url ~ '^https?://'),
    idempotency_key text check (idempotency_key is null or length(idempotency_key) between 1 and 255),
    created_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz not null default now(),
    constraint jobs_idempotency_key_per_user unique (user_id, idempotency_key),
    constraint jobs_running_has_lease check (
        status <> 'running' or (worker_id is not null and lease_expires_at is not null)
    )
);

comment on table public.jobs is
    'Stem separation jobs. Users insert queued rows (RLS); every later change goes through queue.* functions.';

-- The hot paths only ever look at queued or running rows: keep their indexes small.
create index jobs_queued_order on public.jobs (priority desc, created_at, id) where status = 'queued';
create index jobs_running_lease on public.jobs (lease_expires_at) where status = 'running';
create index jobs_user_created on public.jobs (user_id, created_at desc, id desc);
create index jobs_user_sha256 on public.jobs (user_id, input_sha256, created_at desc)
    where input_sha256 is not null;
create index jobs_finished_at on public.jobs (finished_at) where finished_at is not null;

create table public.workers (
    id uuid primary key default gen_random_uuid(),
    machine_id text not null,
    provider text not null default 'local',
    gpu text,
    region text,
    state public.worker_state not null default 'idle',
    draining boolean not null default false,
    current_job_id uuid,
    started_at timestamptz not null default now(),
    last_heartbeat_at timestamptz not null default now(),
    idle_since timestamptz default now(),
    stopped_at timestamptz
);

create index workers_machine on public.workers (machine_id, started_at desc);
create index workers_live on public.workers (last_heartbeat_at) where state in ('idle', 'busy');

-- ---------------------------------------------------------------------------------------------
-- Notifications
-- ---------------------------------------------------------------------------------------------

create function queue.notify_job() returns trigger
language plpgsql as $$
begin
    if new.status = 'queued' and (tg_op = 'INSERT' or old.status is distinct from 'queued') then
        perform pg_notify('stemfleet_jobs_queued', new.id::text);
    end if;
    if tg_op = 'INSERT' or old.status is distinct from new.status
       or old.progress is distinct from new.progress then
        perform pg_notify('stemfleet_job_events', new.id::text);
    end if;
    return null;
end;
$$;

create trigger jobs_notify after insert or update on public.jobs
    for each row execute function queue.notify_job();

-- ---------------------------------------------------------------------------------------------
-- Internal helpers
-- ---------------------------------------------------------------------------------------------

create function queue.default_priority(p_kind public.job_kind) returns integer
language sql immutable as $$
    select case p_kind when 'preview' then 10 else 0 end
$$;

create function queue.backoff(p_attempts integer, p_base_seconds double precision)
returns interval
language sql immutable as $$
    -- exponential: base * 2^(attempts-1), capped at one hour
    select make_interval(secs => least(3600, p_base_seconds * power(2, greatest(p_attempts, 1) - 1)))
$$;

create function queue.lease_lost(p_job_id uuid, p_worker_id uuid, p_attempt integer)
returns void
language plpgsql as $$
declare
    v_job public.jobs;
begin
    select * into v_job from public.jobs where id = p_job_id;
    if not found then
        raise exception 'job % not found', p_job_id using errcode = 'SF002';
    end if;
    raise exception 'job % is no longer running under worker % attempt % (status %, worker %, attempt %)',
        p_job_id, p_worker_id, p_attempt, v_job.status, v_job.worker_id, v_job.attempts
        using errcode = 'SF001';
end;
$$;

-- After a job ends the worker stays 'busy' on a job it still holds (it claims the next job while
-- the model finishes the current one, and uploads the last job's stems while the next one runs)
-- and goes 'idle' only after its last one: the scaler stops idle workers.
create function queue.worker_after_job(p_worker_id uuid, p_now timestamptz) returns void
language plpgsql as $$
declare
    v_held uuid;
begin
    -- plpgsql, not sql: its plan is cached, and every complete / fail / release calls this
    select j.id into v_held
      from public.jobs j
     where j.worker_id = p_worker_id and j.status = 'running'
     order by j.started_at desc, j.id
     limit 1;
    update public.workers
       set state = case when v_held is null then 'idle'::public.worker_state
                        else 'busy'::public.worker_state end,
           current_job_id = v_held,
           idle_since = case when v_held is null then p_now else null end,
           last_heartbeat_at = p_now
     where id = p_worker_id and state = 'busy';
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Job operations
-- ---------------------------------------------------------------------------------------------

create type queue.enqueue_result as (created boolean, job public.jobs);

create function queue.enqueue(
    p_user_id uuid,
    p_input_key text,
    p_kind public.job_kind default 'separate',
    p_params jsonb default '{}'::jsonb,
    p_priority integer default null,
    p_input_sha256 text default null,
    p_duration_s double precision default null,
    p_callback_url text default null,
    p_idempotency_key text default null,
    p_max_attempts integer default 3,
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
            p_callback_url, p_idempotency_key, p_max_attempts, v_now, v_now, v_now)
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

-- Claim up to p_limit jobs: highest priority first, then oldest. One short statement; the caller
-- commits at once and runs the model outside any transaction.
create function queue.claim(
    p_worker_id uuid,
    p_lease_seconds double precision default 60,
    p_limit integer default 1,
    p_kinds public.job_kind[] default null,
    p_now timestamptz default null
) returns setof public.jobs
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
begin
    -- A claim need not wait for its WAL flush: lost in a crash, the job is simply still queued
    -- and the worker's next heartbeat or finish raises SF001. Not waiting keeps pick-up fast and
    -- lets concurrent claims (whose NOTIFY serialises commits) share flushes.
    perform set_config('synchronous_commit', 'off', true);
    -- A draining (or stopped / unknown) worker claims nothing.
    perform 1 from public.workers
     where id = p_worker_id and not draining and state in ('idle', 'busy');
    if not found then
        return;
    end if;

    return query
    with next as (
        select j.id
          from public.jobs j
         where j.status = 'queued'
           and j.run_after <= v_now
           and (p_kinds is null or j.kind = any (p_kinds))
         order by j.priority desc, j.created_at, j.id
         limit greatest(p_limit, 0)
           for update skip locked
    )
    update public.jobs j
       set status = 'running',
           worker_id = p_worker_id,
           attempts = j.attempts + 1,
           lease_expires_at = v_now + make_interval(secs => p_lease_seconds),
           started_at = v_now,
           progress = 0,
           updated_at = v_now
      from next
     where j.id = next.id
    returning j.*;

    if found then
        update public.workers
           set state = 'busy',
               current_job_id = (select id from public.jobs
                                  where worker_id = p_worker_id and status = 'running'
                                  order by started_at desc, id limit 1),
               idle_since = null,
               last_heartbeat_at = v_now
         where id = p_worker_id;
    end if;
end;
$$;

-- Extends the lease and records progress. Returns the job's status: 'running', or 'cancelled'
-- when somebody cancelled it meanwhile (the worker must stop). Raises SF001 when the lease was lost.
create function queue.heartbeat(
    p_job_id uuid,
    p_worker_id uuid,
    p_attempt integer,
    p_progress double precision default null,
    p_lease_seconds double precision default 60,
    p_now timestamptz default null
) returns public.job_status
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_status public.job_status;
begin
    update public.jobs
       set lease_expires_at = v_now + make_interval(secs => p_lease_seconds),
           progress = coalesce(least(greatest(p_progress, 0), 1), progress),
           updated_at = v_now
     where id = p_job_id and status = 'running' and worker_id = p_worker_id
       and attempts = p_attempt
    returning status into v_status;
    if found then
        update public.workers set last_heartbeat_at = v_now where id = p_worker_id;
        return v_status;
    end if;
    select status into v_status from public.jobs
     where id = p_job_id and worker_id = p_worker_id and attempts = p_attempt
       and status = 'cancelled';
    if found then
        return v_status;
    end if;
    perform queue.lease_lost(p_job_id, p_worker_id, p_attempt);
    return null;
end;
$$;

create function queue.complete(
    p_job_id uuid,
    p_worker_id uuid,
    p_attempt integer,
    p_output jsonb,
    p_timings jsonb default '{}'::jsonb,
    p_duration_s double precision default null,
    p_now timestamptz default null
) returns public.jobs
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_job public.jobs;
begin
    update public.jobs
       set status = 'succeeded',
           output = p_output,
           timings = timings || coalesce(p_timings, '{}'::jsonb),
           duration_s = coalesce(p_duration_s, duration_s),
           progress = 1,
           lease_expires_at = null,
           error = null,
           error_kind = null,
           finished_at = v_now,
           updated_at = v_now
     where id = p_job_id and status = 'running' and worker_id = p_worker_id
       and attempts = p_attempt
    returning * into v_job;
    if not found then
        perform queue.lease_lost(p_job_id, p_worker_id, p_attempt);
    end if;
    perform queue.worker_after_job(p_worker_id, v_now);
    return v_job;
end;
$$;

-- Retryable failures go back to 'queued' with exponential backoff until max_attempts;
-- permanent ones (p_retryable = false) fail at once.
create function queue.fail(
    p_job_id uuid,
    p_worker_id uuid,
    p_attempt integer,
    p_error text,
    p_error_kind text,
    p_retryable boolean,
    p_backoff_base_seconds double precision default 10,
    p_timings jsonb default '{}'::jsonb,
    p_now timestamptz default null
) returns public.jobs
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_job public.jobs;
begin
    update public.jobs
       set status = case when p_retryable and attempts < max_attempts
                         then 'queued'::public.job_status else 'failed'::public.job_status end,
           run_after = case when p_retryable and attempts < max_attempts
                            then v_now + queue.backoff(attempts, p_backoff_base_seconds)
                            else run_after end,
           finished_at = case when p_retryable and attempts < max_attempts
                              then null else v_now end,
           worker_id = case when p_retryable and attempts < max_attempts
                            then null else worker_id end,
           error = p_error,
           error_kind = p_error_kind,
           timings = timings || coalesce(p_timings, '{}'::jsonb),
           lease_expires_at = null,
           updated_at = v_now
     where id = p_job_id and status = 'running' and worker_id = p_worker_id
       and attempts = p_attempt
    returning * into v_job;
    if not found then
        perform queue.lease_lost(p_job_id, p_worker_id, p_attempt);
    end if;
    perform queue.worker_after_job(p_worker_id, v_now);
    return v_job;
end;
$$;

-- Back to 'queued' at once, the attempt not charged (worker shutting down, job not started).
create function queue.release(
    p_job_id uuid,
    p_worker_id uuid,
    p_attempt integer,
    p_now timestamptz default null
) returns public.jobs
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_job public.jobs;
begin
    update public.jobs
       set status = 'queued',
           attempts = attempts - 1,
           worker_id = null,
           lease_expires_at = null,
           started_at = null,
           progress = 0,
           run_after = v_now,
           updated_at = v_now
     where id = p_job_id and status = 'running' and worker_id = p_worker_id
       and attempts = p_attempt
    returning * into v_job;
    if not found then
        perform queue.lease_lost(p_job_id, p_worker_id, p_attempt);
    end if;
    perform queue.worker_after_job(p_worker_id, v_now);
    return v_job;
end;
$$;

-- Queued: cancelled at once. Running: cancelled at once too; the worker learns it from its next
-- heartbeat (which returns 'cancelled') and stops; its later complete/fail raise SF001.
create function queue.cancel(
    p_job_id uuid,
    p_reason text default 'cancelled by user',
    p_now timestamptz default null
) returns public.jobs
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_job public.jobs;
begin
    update public.jobs
       set status = 'cancelled',
           error = p_reason,
           error_kind = 'cancelled',
           lease_expires_at = null,
           finished_at = v_now,
           updated_at = v_now
     where id = p_job_id and status in ('queued', 'running')
    returning * into v_job;
    if found then
        return v_job;
    end if;
    select * into v_job from public.jobs where id = p_job_id;
    if not found then
        raise exception 'job % not found', p_job_id using errcode = 'SF002';
    end if;
    raise exception 'job % is already %', p_job_id, v_job.status using errcode = 'SF003';
end;
$$;

-- Requeue (with backoff) or fail for good the running jobs whose lease expired.
create function queue.reap(
    p_backoff_base_seconds double precision default 10,
    p_now timestamptz default null
) returns table (job_id uuid, status public.job_status, worker_id uuid, attempts integer)
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
begin
    return query
    with expired as (
        select j.id, j.worker_id as old_worker
          from public.jobs j
         where j.status = 'running' and j.lease_expires_at < v_now
         order by j.lease_expires_at
           for update skip locked
    ), updated as (
        update public.jobs j
           set status = case when j.attempts < j.max_attempts
                             then 'queued'::public.job_status else 'failed'::public.job_status end,
               run_after = case when j.attempts < j.max_attempts
                                then v_now + queue.backoff(j.attempts, p_backoff_base_seconds)
                                else j.run_after end,
               finished_at = case when j.attempts < j.max_attempts then null else v_now end,
               worker_id = case when j.attempts < j.max_attempts then null else j.worker_id end,
               error = format('worker %s stopped heartbeating (lease expired, attempt %s of %s)',
                              j.worker_id, j.attempts, j.max_attempts),
               error_kind = 'lease_expired',
               lease_expires_at = null,
               updated_at = v_now
          from expired
         where j.id = expired.id
        returning j.id, j.status, expired.old_worker, j.attempts
    ), lost_workers as (
        update public.workers w
           set state = 'lost', current_job_id = null
          from updated u
         where w.id = u.old_worker and w.current_job_id = u.id
        returning w.id
    )
    select u.id, u.status, u.old_worker, u.attempts from updated u;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Worker operations
-- ---------------------------------------------------------------------------------------------

create function queue.register_worker(
    p_machine_id text,
    p_provider text default 'local',
    p_gpu text default null,
    p_region text default null,
    p_now timestamptz default null
) returns public.workers
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_worker public.workers;
begin
    -- A machine runs one worker process: an older registration of it has ended.
    update public.workers
       set state = 'stopped', stopped_at = v_now, current_job_id = null
     where machine_id = p_machine_id and state in ('idle', 'busy', 'lost');
    insert into public.workers (machine_id, provider, gpu, region, state, started_at,
                                last_heartbeat_at, idle_since)
    values (p_machine_id, p_provider, p_gpu, p_region, 'idle', v_now, v_now, v_now)
    returning * into v_worker;
    return v_worker;
end;
$$;

-- Returns the worker row so the worker learns whether the scaler asked it to drain.
create function queue.worker_heartbeat(p_worker_id uuid, p_now timestamptz default null)
returns public.workers
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_worker public.workers;
begin
    update public.workers
       set last_heartbeat_at = v_now,
           state = case when state = 'lost' then
                            case when current_job_id is null then 'idle'::public.worker_state
                                 else 'busy'::public.worker_state end
                        else state end
     where id = p_worker_id and state <> 'stopped'
    returning * into v_worker;
    if not found then
        raise exception 'worker % is not registered or has stopped', p_worker_id
            using errcode = 'SF002';
    end if;
    return v_worker;
end;
$$;

create function queue.drain_worker(p_worker_id uuid, p_draining boolean default true)
returns public.workers
language plpgsql as $$
declare
    v_worker public.workers;
begin
    update public.workers set draining = p_draining
     where id = p_worker_id and state <> 'stopped'
    returning * into v_worker;
    if not found then
        raise exception 'worker % is not registered or has stopped', p_worker_id
            using errcode = 'SF002';
    end if;
    return v_worker;
end;
$$;

create function queue.worker_stopped(p_worker_id uuid, p_now timestamptz default null)
returns public.workers
language sql as $$
    update public.workers
       set state = 'stopped', current_job_id = null,
           stopped_at = coalesce(p_now, now())
     where id = p_worker_id
    returning *;
$$;

-- Finished rows are not needed by the queue: prune them after a retention period.
create function queue.prune_finished(p_older_than interval, p_now timestamptz default null)
returns integer
language sql as $$
    with gone as (
        delete from public.jobs
         where status in ('succeeded', 'failed', 'cancelled')
           and finished_at < coalesce(p_now, now()) - p_older_than
        returning 1
    )
    select count(*)::integer from gone;
$$;
