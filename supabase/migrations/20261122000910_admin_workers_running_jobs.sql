-- admin.workers gains running_jobs: a worker on an accelerator separates a group of jobs at once
-- (STEMFLEET_GROUP_JOBS), and current_job_id names only the latest one it claimed.

create or replace view admin.workers as
select w.id, w.machine_id, w.provider, w.gpu, w.region, w.state, w.draining,
       w.current_job_id, w.started_at, w.last_heartbeat_at, w.idle_since,
       extract(epoch from now() - w.last_heartbeat_at)::double precision as heartbeat_age_s,
       (select count(*)::integer from public.jobs j
         where j.worker_id = w.id and j.status = 'running') as running_jobs
  from public.workers w
 where w.state <> 'stopped'
 order by w.machine_id, w.started_at;
