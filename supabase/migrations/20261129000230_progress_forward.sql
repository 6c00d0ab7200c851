-- Progress only moves forward within an attempt, and starts again from 0 with the next one.
--
-- A heartbeat keeps the greatest progress reported for the running attempt (a worker that
-- starts a separation over, after an out-of-memory retry or a failed group, reports lower values
-- for a while: the row, SSE and the CLI bar never go back). queue.claim sets 0 when an attempt
-- starts; a job back in 'queued' (a retryable failure, the reaper, a release) shows 0, not the
-- stale progress of the attempt that ended.

create or replace function queue.heartbeat(
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
           progress = greatest(progress, coalesce(least(greatest(p_progress, 0), 1), 0)),
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

create function queue.queued_progress_reset() returns trigger
language plpgsql as $$
begin
    new.progress := 0;
    return new;
end;
$$;

create trigger jobs_queued_progress_reset before update on public.jobs
    for each row when (new.status = 'queued' and new.progress <> 0)
    execute function queue.queued_progress_reset();
