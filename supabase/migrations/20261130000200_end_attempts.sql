-- One rule for ending a running attempt that did not succeed, wherever it ends: a worker's
-- queue.fail, the reaper (lease expired) and queue.release_dead_workers (the machine went down)
-- all call queue.end_attempts. A retryable end goes back to queued with backoff while attempts
-- remain, else the job fails; the error says what went wrong and what happens next: "(attempt n
-- of m; it will be tried again)" or "(gave up after m attempts)". Before, the three repeated the
-- rule and drifted: only queue.fail said what happens next, and the reaper's message named the
-- worker's id.

create function queue.end_attempts(
    p_job_ids uuid[],
    p_error text,
    p_error_kind text,
    p_retryable boolean,
    p_backoff_base_seconds double precision,
    p_now timestamptz,
    p_timings jsonb default '{}'::jsonb
) returns table (job_id uuid, status public.job_status, worker_id uuid, attempts integer)
language sql as $$
    -- the caller has locked these rows; only running ones are ended
    with old as (
        select j.id, j.worker_id
          from public.jobs j
         where j.id = any(p_job_ids) and j.status = 'running'
    ), ended as (
        update public.jobs j
           set status = case when p_retryable and j.attempts < j.max_attempts
                             then 'queued'::public.job_status else 'failed'::public.job_status end,
               run_after = case when p_retryable and j.attempts < j.max_attempts
                                then p_now + queue.backoff(j.attempts, p_backoff_base_seconds)
                                else j.run_after end,
               finished_at = case when p_retryable and j.attempts < j.max_attempts
                                  then null else p_now end,
               worker_id = case when p_retryable and j.attempts < j.max_attempts
                                then null else j.worker_id end,
               error = case
                           when not p_retryable then p_error
                           when j.attempts < j.max_attempts then format(
                               '%s (attempt %s of %s; it will be tried again)',
                               p_error, j.attempts, j.max_attempts)
                           else format('%s (gave up after %s attempts)', p_error, j.attempts)
                       end,
               error_kind = p_error_kind,
               timings = j.timings || coalesce(p_timings, '{}'::jsonb),
               lease_expires_at = null,
               updated_at = p_now
          from old
         where j.id = old.id
        returning j.id, j.status, old.worker_id, j.attempts
    )
    select e.id, e.status, e.worker_id, e.attempts from ended e order by e.id;
$$;

revoke all on function queue.end_attempts(uuid[], text, text, boolean, double precision,
    timestamptz, jsonb) from public, anon, authenticated;


create or replace function queue.fail(
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
    perform 1 from public.jobs
     where id = p_job_id and status = 'running' and worker_id = p_worker_id
       and attempts = p_attempt
       for update;
    if not found then
        perform queue.lease_lost(p_job_id, p_worker_id, p_attempt);
    end if;
    perform queue.end_attempts(array[p_job_id], p_error, p_error_kind, p_retryable,
                               p_backoff_base_seconds, v_now, p_timings);
    select * into v_job from public.jobs where id = p_job_id;
    perform queue.worker_after_job(p_worker_id, v_now);
    return v_job;
end;
$$;


create or replace function queue.reap(
    p_backoff_base_seconds double precision default 10,
    p_now timestamptz default null
) returns table (job_id uuid, status public.job_status, worker_id uuid, attempts integer)
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_expired uuid[];
begin
    select coalesce(array_agg(e.id), '{}') into v_expired
      from (select j.id
              from public.jobs j
             where j.status = 'running' and j.lease_expires_at < v_now
             order by j.lease_expires_at
               for update skip locked) e;
    return query
    with ended as (
        select * from queue.end_attempts(
            v_expired, 'the worker stopped answering (its lease expired)', 'lease_expired', true,
            p_backoff_base_seconds, v_now)
    ), lost_workers as (
        update public.workers w
           set state = 'lost', current_job_id = null
          from ended e
         where w.id = e.worker_id and w.current_job_id = e.job_id
        returning w.id
    )
    select e.job_id, e.status, e.worker_id, e.attempts from ended e;
end;
$$;


create or replace function queue.release_dead_workers(
    p_machines jsonb,  -- [{"id": machine id, "before": timestamptz, "silent_since": timestamptz}]
    p_backoff_base_seconds double precision default 10,
    p_now timestamptz default null
) returns table (job_id uuid, status public.job_status, worker_id uuid, attempts integer)
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_held uuid[];
begin
    with machines as (
        select m.id, coalesce(m.before, v_now) as before, m.silent_since
          from jsonb_to_recordset(coalesce(p_machines, '[]'::jsonb))
               as m(id text, before timestamptz, silent_since timestamptz)
    ), dead as (
        update public.workers w
           set state = 'stopped', stopped_at = v_now, current_job_id = null
          from machines m
         where w.machine_id = m.id
           and w.state <> 'stopped'
           and w.started_at <= m.before
           and (m.silent_since is null or w.last_heartbeat_at <= m.silent_since)
        returning w.id
    ), held as (
        select j.id
          from public.jobs j
          join dead d on d.id = j.worker_id
         where j.status = 'running'
         order by j.id
           for update of j skip locked
    )
    select coalesce(array_agg(held.id), '{}') into v_held from held;
    return query
    select * from queue.end_attempts(
        v_held, 'the machine running this job went down', 'worker_died', true,
        p_backoff_base_seconds, v_now);
end;
$$;
