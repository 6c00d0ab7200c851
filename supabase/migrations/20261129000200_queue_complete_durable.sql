-- queue.complete waits for its WAL flush again (it did not since 20261122000900).
--
-- A completion is what a user is told about (the row, SSE, the webhook): a crash must never roll
-- it back, or a job reported `succeeded` runs and succeeds a second time. A Demucs job takes
-- seconds to minutes, so the throughput the asynchronous commit bought (one flush shared by
-- several workers' completions) is not worth that. queue.claim stays asynchronous: a lost claim
-- only means the job is still queued and runs again (its worker's next heartbeat raises SF001).

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
    -- Transaction-local, so it holds at this transaction's commit whatever the session or an
    -- earlier statement of the transaction (queue.claim sets it off) chose.
    perform set_config('synchronous_commit', 'on', true);
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
