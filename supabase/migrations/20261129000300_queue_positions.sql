-- One definition of a job's place in the queue, used everywhere the API shows it (the submit
-- answer, GET /v1/jobs/{id}, the job list and the event stream).
--
-- A queued job's position is its 1-based rank among the queued jobs that are due
-- (run_after <= now) in claim order: priority, then age. Jobs waiting out a retry backoff are not
-- in line yet: they are not counted ahead of anybody, and have no position themselves (null)
-- until they are due. One window over the due queued jobs answers any number of ids at once.

create function queue.queue_positions(p_job_ids uuid[], p_now timestamptz default null)
returns table (job_id uuid, queue_position integer)
language sql stable as $$
    select ranked.id, ranked.queue_position
      from (select j.id,
                   (row_number() over (order by j.priority desc, j.created_at, j.id))::integer
                       as queue_position
              from public.jobs j
             where j.status = 'queued'
               and j.run_after <= coalesce(p_now, now())) as ranked
     where ranked.id = any (p_job_ids)
$$;

-- The single-job form answers from the same definition.
create or replace function queue.job_position(p_job_id uuid) returns integer
language sql stable as $$
    select p.queue_position from queue.queue_positions(array[p_job_id]) p
$$;

revoke all on function queue.queue_positions(uuid[], timestamptz) from public, anon, authenticated;
grant execute on function queue.queue_positions(uuid[], timestamptz) to service_role;
