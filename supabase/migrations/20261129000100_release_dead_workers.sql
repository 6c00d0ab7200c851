-- A dead worker's jobs come back at once (issue 13, item 7). When the provider reports a worker's
-- machine stopped, failed or gone (the local provider sees the process exit), the scaler calls
-- queue.release_dead_workers with those machines' ids: every worker registered on them before
-- the provider was asked (p_seen_at) and not already stopped is marked stopped, and its running
-- jobs are released exactly as an expired lease releases them, without waiting for the lease:
--   * the release counts as an attempt (the claim already counted it and it is not given back):
--     a job that kills its worker (out of memory, a crash in the model) must not loop forever,
--     so after max_attempts it fails with the reason;
--   * a retry waits queue.backoff like a lease expiry, so such a job does not take down the
--     next worker at once;
--   * error_kind 'worker_died' tells it apart from 'lease_expired'.
-- The lease stays the backstop (a machine the provider never reports, a missed scaler run).

create function queue.release_dead_workers(
    p_machine_ids text[],
    p_seen_at timestamptz default null,
    p_backoff_base_seconds double precision default 10,
    p_now timestamptz default null
) returns table (job_id uuid, status public.job_status, worker_id uuid, attempts integer)
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_seen timestamptz := coalesce(p_seen_at, v_now);
begin
    return query
    with dead as (
        update public.workers w
           set state = 'stopped', stopped_at = v_now, current_job_id = null
         where w.machine_id = any(p_machine_ids)
           and w.state <> 'stopped'
           and w.started_at <= v_seen
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

comment on function queue.release_dead_workers(text[], timestamptz, double precision, timestamptz) is
    'Workers on machines the provider reports stopped, failed or gone: marked stopped, their '
    'running jobs released at once (an attempt, with backoff, like a lease expiry).';

revoke all on function queue.release_dead_workers(text[], timestamptz, double precision, timestamptz)
    from public, anon, authenticated;
grant execute on function queue.release_dead_workers(text[], timestamptz, double precision, timestamptz)
    to service_role;
