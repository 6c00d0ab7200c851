-- A dead worker's jobs come back at once (issue 13, item 7). When the provider reports a worker's
-- machine stopped, failed or gone (the local provider sees the process exit), or started again
-- since a worker registered on it, the scaler calls queue.release_dead_workers with each such
-- machine and a time: every worker registered on it at or before that time (when the provider
-- was asked; for a machine booted again, just before its current boot, and only a worker not
-- heard from since) and not already stopped is marked stopped, and its running jobs are
-- released as an expired lease releases them, at once:
--   * the release counts as an attempt (the claim already counted it and it is not given back):
--     a job that kills its worker (out of memory, a crash in the model) must not loop forever,
--     so after max_attempts it fails with the reason;
--   * a retry waits queue.backoff like a lease expiry, so such a job does not take down the
--     next worker at once;
--   * error_kind 'worker_died' tells it apart from 'lease_expired'.
-- The lease stays the backstop (a machine the provider never reports, a missed scaler run).

create function queue.release_dead_workers(
    p_machines jsonb,  -- [{"id": machine id, "before": timestamptz, "silent_since": timestamptz}]
    p_backoff_base_seconds double precision default 10,
    p_now timestamptz default null
) returns table (job_id uuid, status public.job_status, worker_id uuid, attempts integer)
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
begin
    return query
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
        select j.id, j.worker_id as old_worker
          from public.jobs j
          join dead d on d.id = j.worker_id
         where j.status = 'running'
         order by j.id
           for update of j skip locked
    ), updated as (
        update public.jobs j
           set status = case when j.attempts < j.max_attempts
                             then 'queued'::public.job_status else 'failed'::public.job_status end,
               run_after = case when j.attempts < j.max_attempts
                                then v_now + queue.backoff(j.attempts, p_backoff_base_seconds)
                                else j.run_after end,
               finished_at = case when j.attempts < j.max_attempts then null else v_now end,
               worker_id = case when j.attempts < j.max_attempts then null else j.worker_id end,
               error = format('the machine running this job went down (attempt %s of %s)',
                              j.attempts, j.max_attempts),
               error_kind = 'worker_died',
               lease_expires_at = null,
               updated_at = v_now
          from held
         where j.id = held.id
        returning j.id, j.status, held.old_worker, j.attempts
    )
    select u.id, u.status, u.old_worker, u.attempts from updated u order by u.id;
end;
$$;

comment on function queue.release_dead_workers(jsonb, double precision, timestamptz) is
    'Workers on machines the provider reports stopped, failed or gone: marked stopped, their '
    'running jobs released at once (an attempt, with backoff, like a lease expiry).';

revoke all on function queue.release_dead_workers(jsonb, double precision, timestamptz)
    from public, anon, authenticated;
grant execute on function queue.release_dead_workers(jsonb, double precision, timestamptz)
    to service_role;
