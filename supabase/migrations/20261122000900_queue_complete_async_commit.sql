-- queue.complete commits without waiting for its WAL flush, as queue.claim already does.
--
-- Why: every job-state change notifies (stemfleet_job_events), and Postgres serialises the
-- commits of notifying transactions in a database until each one's WAL flush ends, so durable
-- completions from concurrent workers queue up behind each other's disk flushes (measured in
-- bench/bench_queue.py: +20-60 % claim+complete throughput at 8 workers without the wait).
--
-- What it risks: a Postgres crash can roll back the completions of its last fraction of a second
-- (at most 3 x wal_writer_delay). Such a job is 'running' again under its old lease; the reaper
-- re-queues it when the lease ends and a worker runs it again, rewriting the same output keys
-- (whole-object writes). The cost is one re-run per lost completion, the same as a lost claim:
-- its worker's finish raises SF001 and the job runs again. Nothing a user sent is ever lost:
-- enqueue and cancel stay durable.

create or replace function queue.complete(
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
    perform set_config('synchronous_commit', 'off', true);
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
