-- A failed attempt's error says what happened to the job, decided here where the retry is
-- decided: "(attempt n of m; it will be tried again)" when it goes back to queued, "(gave up after
-- m attempts)" when a retryable error used the last attempt. The worker's message says only what
-- went wrong (it used to promise "retrying" on a job that had just failed for good).
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
           error = case
                       when not p_retryable then p_error
                       when attempts < max_attempts then format(
                           '%s (attempt %s of %s; it will be tried again)',
                           p_error, attempts, max_attempts)
                       else format('%s (gave up after %s attempts)', p_error, attempts)
                   end,
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
