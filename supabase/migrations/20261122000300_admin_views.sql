-- Admin views: read by operators in the SQL editor and by the API's admin endpoints (service role).
-- Not granted to anon / authenticated (the admin schema itself is not granted to them).

create view admin.queue_depth as
select s.status, k.kind, count(j.id)::integer as jobs
  from unnest(enum_range(null::public.job_status)) as s(status)
 cross join unnest(enum_range(null::public.job_kind)) as k(kind)
  left join public.jobs j on j.status = s.status and j.kind = k.kind
 group by s.status, k.kind
 order by s.status, k.kind;

create view admin.queue_oldest as
select kind,
       count(*)::integer as queued,
       min(created_at) as oldest_created_at,
       extract(epoch from now() - min(created_at))::double precision as oldest_age_s
  from public.jobs
 where status = 'queued'
 group by kind
 order by kind;

create view admin.job_times_hourly as
select date_trunc('hour', started_at) as hour,
       kind,
       count(*)::integer as jobs,
       percentile_cont(0.5) within group (order by extract(epoch from started_at - created_at))
           as wait_p50_s,
       percentile_cont(0.95) within group (order by extract(epoch from started_at - created_at))
           as wait_p95_s,
       percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at))
           as run_p50_s,
       percentile_cont(0.95) within group (order by extract(epoch from finished_at - started_at))
           as run_p95_s
  from public.jobs
 where status = 'succeeded' and started_at is not null and finished_at is not null
 group by 1, 2
 order by 1 desc, 2;

create view admin.failures as
select coalesce(error_kind, 'unknown') as error_kind,
       count(*)::integer as jobs,
       max(finished_at) as last_failed_at,
       (array_agg(error order by finished_at desc))[1] as last_error
  from public.jobs
 where status = 'failed'
 group by 1
 order by jobs desc, error_kind;

create view admin.workers as
select w.id, w.machine_id, w.provider, w.gpu, w.region, w.state, w.draining,
       w.current_job_id, w.started_at, w.last_heartbeat_at, w.idle_since,
       extract(epoch from now() - w.last_heartbeat_at)::double precision as heartbeat_age_s
  from public.workers w
 where w.state <> 'stopped'
 order by w.machine_id, w.started_at;

revoke all on all tables in schema admin from public, anon, authenticated;
grant select on all tables in schema admin to service_role;
