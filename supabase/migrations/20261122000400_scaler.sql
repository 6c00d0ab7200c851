-- stemfleet scaler: machine run time (spend) and every scaler run (inputs, plan, actions, errors).
--
-- Conventions as in the queue: every function takes p_now timestamptz default null and uses
-- coalesce(p_now, now()) so tests inject time; the Python side calls these functions only
-- through app/queue/fleet.py.

create schema if not exists scaler;

-- One row per stretch of time a machine was billed: from the start (or create) request until
-- it was seen stopped. Spend = hourly_usd x the length of each stretch.
create table scaler.machine_runs (
    id bigint generated always as identity primary key,
    provider text not null,
    machine_id text not null check (machine_id <> ''),
    size text not null,
    hourly_usd numeric(12, 6) not null check (hourly_usd >= 0),
    started_at timestamptz not null,
    stop_requested_at timestamptz,
    stopped_at timestamptz,
    stop_reason text,
    worker_id uuid,
    constraint machine_runs_order check (stopped_at is null or stopped_at >= started_at)
);

comment on table scaler.machine_runs is
    'Billed run time of worker machines; opened on start/create, closed when seen stopped.';

create unique index machine_runs_one_open on scaler.machine_runs (provider, machine_id)
    where stopped_at is null;
create index machine_runs_machine on scaler.machine_runs (machine_id, started_at desc);
create index machine_runs_started on scaler.machine_runs (started_at);
create index machine_runs_stopped on scaler.machine_runs (stopped_at);

create table scaler.runs (
    id bigint generated always as identity primary key,
    started_at timestamptz not null,
    finished_at timestamptz not null,
    provider text not null,
    dry_run boolean not null default false,
    inputs jsonb not null,
    plan jsonb not null,
    actions jsonb not null default '[]'::jsonb check (jsonb_typeof(actions) = 'array'),
    errors jsonb not null default '[]'::jsonb check (jsonb_typeof(errors) = 'array'),
    scaled_up boolean not null default false,
    scaled_down boolean not null default false
);

comment on table scaler.runs is
    'One row per scaler reconcile: what it saw, what it planned, what it did, what failed.';

create index runs_started on scaler.runs (started_at desc);
create index runs_scaled_up on scaler.runs (started_at desc) where scaled_up;
create index runs_scaled_down on scaler.runs (started_at desc) where scaled_down;

-- ---------------------------------------------------------------------------------------------
-- Machine runs
-- ---------------------------------------------------------------------------------------------

-- Opens a run for a machine that was just started or created; a no-op when one is open.
create function scaler.machine_started(
    p_provider text,
    p_machine_id text,
    p_size text,
    p_hourly_usd double precision,
    p_now timestamptz default null
) returns scaler.machine_runs
language plpgsql as $$
declare
    v_run scaler.machine_runs;
begin
    insert into scaler.machine_runs (provider, machine_id, size, hourly_usd, started_at)
    values (p_provider, p_machine_id, p_size, p_hourly_usd, coalesce(p_now, now()))
    on conflict (provider, machine_id) where stopped_at is null do nothing
    returning * into v_run;
    if not found then
        select * into v_run from scaler.machine_runs
         where provider = p_provider and machine_id = p_machine_id and stopped_at is null;
    end if;
    return v_run;
end;
$$;

-- Notes that the scaler asked the machine to stop; the run is closed once it is seen stopped.
create function scaler.machine_stop_requested(
    p_provider text,
    p_machine_id text,
    p_reason text,
    p_now timestamptz default null
) returns scaler.machine_runs
language sql as $$
    update scaler.machine_runs
       set stop_requested_at = coalesce(stop_requested_at, coalesce(p_now, now())),
           stop_reason = coalesce(stop_reason, p_reason)
     where provider = p_provider and machine_id = p_machine_id and stopped_at is null
    returning *;
$$;

-- The worker that ran on a machine during a run: the newest registration since the run began
-- (a minute of slack for clocks that disagree between the provider and the database).
create function scaler.run_worker(p_machine_id text, p_since timestamptz)
returns public.workers
language sql stable as $$
    select w.* from public.workers w
     where w.machine_id = p_machine_id and w.started_at >= p_since - interval '1 minute'
     order by w.started_at desc
     limit 1;
$$;

-- Brings the records in line with what the provider reports. p_machines is the provider's whole
-- list: [{"id", "size", "hourly_usd", "billed": bool, "state_since": timestamptz|null}].
--   * a billed machine without an open run gets one (started when it entered its state);
--   * an open run whose machine is not billed any more (stopped, or gone from the list) is
--     closed: at its worker's exit or last heartbeat when a worker ran on it (a worker that
--     exited after its idle timeout stops its machine), else when the provider says it stopped,
--     else now; never before the scaler asked it to stop (it was billed until then at least);
--   * open runs learn their worker's id once it registers.
create function scaler.reconcile_machines(
    p_provider text,
    p_machines jsonb,
    p_now timestamptz default null
) returns table (change text, machine_id text, at timestamptz)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now timestamptz := coalesce(p_now, now());
begin
    return query
    with seen as (
        select distinct on (m.id) m.id as machine_id, m.size, m.hourly_usd, m.billed,
               m.state_since
          from jsonb_to_recordset(coalesce(p_machines, '[]'::jsonb))
               as m(id text, size text, hourly_usd double precision, billed boolean,
                    state_since timestamptz)
         order by m.id
    ), closing as (
        select r.id,
               least(v_now, greatest(r.started_at, r.stop_requested_at, coalesce(
                   (select coalesce(w.stopped_at, w.last_heartbeat_at)
                      from scaler.run_worker(r.machine_id, r.started_at) w),
                   s.state_since,
                   v_now))) as ended_at,
               (select w.id from scaler.run_worker(r.machine_id, r.started_at) w) as worker_id,
               case when s.machine_id is null then 'gone from the provider'
                    else 'seen stopped' end as reason
          from scaler.machine_runs r
          left join seen s on s.machine_id = r.machine_id
         where r.provider = p_provider and r.stopped_at is null
           and (s.machine_id is null or not s.billed)
    ), closed as (
        update scaler.machine_runs r
           set stopped_at = c.ended_at,
               worker_id = coalesce(r.worker_id, c.worker_id),
               stop_reason = coalesce(r.stop_reason, c.reason)
          from closing c
         where r.id = c.id
        returning 'closed'::text, r.machine_id, r.stopped_at
    ), opened as (
        insert into scaler.machine_runs (provider, machine_id, size, hourly_usd, started_at)
        select p_provider, s.machine_id, s.size, s.hourly_usd,
               least(v_now, coalesce(s.state_since, v_now))
          from seen s
         where s.billed
           and not exists (select 1 from scaler.machine_runs r
                            where r.provider = p_provider and r.machine_id = s.machine_id
                              and r.stopped_at is null)
        on conflict do nothing
        returning 'opened'::text, machine_runs.machine_id, machine_runs.started_at
    )
    select * from closed
    union all
    select * from opened;

    update scaler.machine_runs r
       set worker_id = (select w.id from scaler.run_worker(r.machine_id, r.started_at) w)
     where r.provider = p_provider and r.stopped_at is null and r.worker_id is null
       and exists (select 1 from public.workers w
                    where w.machine_id = r.machine_id
                      and w.started_at >= r.started_at - interval '1 minute');
end;
$$;

-- Money spent so far today and this month (UTC), and the hourly rate of machines billed now.
create function scaler.spend(p_now timestamptz default null)
returns table (today_usd double precision, month_usd double precision,
               hourly_usd double precision)
language sql stable as $$
    with bounds as (
        select coalesce(p_now, now()) as now_at,
               date_trunc('day', coalesce(p_now, now()), 'UTC') as day_start,
               date_trunc('month', coalesce(p_now, now()), 'UTC') as month_start
    ), spans as (
        select r.hourly_usd::double precision as hourly, r.started_at,
               least(coalesce(r.stopped_at, b.now_at), b.now_at) as ended_at,
               r.stopped_at is null as open, b.*
          from scaler.machine_runs r, bounds b
         where r.started_at < b.now_at
           and (r.stopped_at is null or r.stopped_at > b.month_start)
    )
    select coalesce(sum(hourly * greatest(0, extract(epoch from
               ended_at - greatest(started_at, day_start)))) / 3600, 0)::double precision,
           coalesce(sum(hourly * greatest(0, extract(epoch from
               ended_at - greatest(started_at, month_start)))) / 3600, 0)::double precision,
           coalesce(sum(hourly) filter (where open), 0)::double precision
      from spans;
$$;

-- ---------------------------------------------------------------------------------------------
-- Scaler inputs and records
-- ---------------------------------------------------------------------------------------------

-- The backlog by kind and priority: queued jobs that may run now, queued jobs waiting for their
-- retry backoff, running jobs, and the oldest runnable job.
create function scaler.backlog(p_now timestamptz default null)
returns table (kind public.job_kind, priority integer, queued integer, delayed integer,
               running integer, oldest_queued_at timestamptz)
language sql stable as $$
    select j.kind, j.priority,
           (count(*) filter (where j.status = 'queued'
                               and j.run_after <= coalesce(p_now, now())))::integer,
           (count(*) filter (where j.status = 'queued'
                               and j.run_after > coalesce(p_now, now())))::integer,
           (count(*) filter (where j.status = 'running'))::integer,
           min(j.created_at) filter (where j.status = 'queued'
                                       and j.run_after <= coalesce(p_now, now()))
      from public.jobs j
     where j.status in ('queued', 'running')
     group by j.kind, j.priority
     order by j.kind, j.priority desc;
$$;

-- The newest worker registration of each of the given machines.
create function scaler.fleet_workers(p_machine_ids text[])
returns setof public.workers
language sql stable as $$
    select distinct on (w.machine_id) w.*
      from public.workers w
     where w.machine_id = any (p_machine_ids)
     order by w.machine_id, w.started_at desc, w.id;
$$;

-- When the scaler last scaled up and down (successful actions only): the cooldowns' clock.
create function scaler.history()
returns table (last_scale_up_at timestamptz, last_scale_down_at timestamptz)
language sql stable as $$
    select (select max(started_at) from scaler.runs where scaled_up),
           (select max(started_at) from scaler.runs where scaled_down);
$$;

-- Records one reconcile. An action counts as a scale-up / scale-down when it succeeded and its
-- "direction" is 'up' / 'down'.
create function scaler.record_run(
    p_provider text,
    p_started_at timestamptz,
    p_inputs jsonb,
    p_plan jsonb,
    p_actions jsonb,
    p_errors jsonb,
    p_dry_run boolean default false,
    p_now timestamptz default null
) returns scaler.runs
language sql as $$
    insert into scaler.runs (started_at, finished_at, provider, dry_run, inputs, plan, actions,
                             errors, scaled_up, scaled_down)
    values (p_started_at, greatest(p_started_at, coalesce(p_now, now())), p_provider, p_dry_run,
            p_inputs, p_plan, coalesce(p_actions, '[]'::jsonb), coalesce(p_errors, '[]'::jsonb),
            exists (select 1 from jsonb_array_elements(coalesce(p_actions, '[]'::jsonb)) a
                     where a ->> 'direction' = 'up' and (a ->> 'ok')::boolean),
            exists (select 1 from jsonb_array_elements(coalesce(p_actions, '[]'::jsonb)) a
                     where a ->> 'direction' = 'down' and (a ->> 'ok')::boolean))
    returning *;
$$;

-- ---------------------------------------------------------------------------------------------
-- Admin views
-- ---------------------------------------------------------------------------------------------

create view admin.spend_daily as
with spans as (
    select r.machine_id, r.hourly_usd, r.started_at,
           coalesce(r.stopped_at, greatest(now(), r.started_at)) as ended_at
      from scaler.machine_runs r
), per_day as (
    select s.machine_id, s.hourly_usd, d.day,
           greatest(s.started_at, d.day) as from_at,
           least(s.ended_at, d.day + interval '1 day') as to_at
      from spans s
     cross join lateral generate_series(date_trunc('day', s.started_at, 'UTC'),
                                        date_trunc('day', s.ended_at, 'UTC'),
                                        interval '1 day') as d(day)
), budget as (
    select (r.inputs -> 'settings' ->> 'daily_budget_usd')::numeric as daily_budget_usd
      from scaler.runs r
     order by r.id desc
     limit 1
)
select (p.day at time zone 'UTC')::date as day,
       count(distinct p.machine_id)::integer as machines,
       round((sum(extract(epoch from p.to_at - p.from_at)) / 3600)::numeric, 4) as machine_hours,
       round(sum(p.hourly_usd * extract(epoch from p.to_at - p.from_at) / 3600), 4) as cost_usd,
       (select daily_budget_usd from budget) as daily_budget_usd,
       round(100 * sum(p.hourly_usd * extract(epoch from p.to_at - p.from_at) / 3600)
             / nullif((select daily_budget_usd from budget), 0), 1) as budget_used_pct
  from per_day p
 where p.to_at > p.from_at
 group by p.day
 order by p.day desc;

comment on view admin.spend_daily is
    'Machine-hours and cost per UTC day; daily_budget_usd is the setting seen by the latest scaler run.';

create view admin.spend_by_job as
select j.id as job_id, j.user_id, j.kind, j.status, j.duration_s as audio_s,
       j.worker_id, w.machine_id, mr.provider, mr.size,
       j.started_at, j.finished_at,
       extract(epoch from coalesce(j.finished_at, now()) - j.started_at)::double precision
           as run_s,
       mr.hourly_usd,
       round(mr.hourly_usd * extract(epoch from coalesce(j.finished_at, now()) - j.started_at)
             / 3600, 6) as cost_usd
  from public.jobs j
  join public.workers w on w.id = j.worker_id
  left join lateral (
      select r.provider, r.size, r.hourly_usd
        from scaler.machine_runs r
       where r.machine_id = w.machine_id and r.started_at <= j.started_at
       order by r.started_at desc
       limit 1
  ) mr on true
 where j.started_at is not null;

comment on view admin.spend_by_job is
    'Cost of each started job: its run time on its machine times that machine''s hourly price.';

create view admin.scaler_runs as
select r.id, r.started_at, r.finished_at,
       round((extract(epoch from r.finished_at - r.started_at) * 1000)::numeric, 1) as duration_ms,
       r.provider, r.dry_run,
       (r.inputs -> 'backlog' ->> 'queued')::integer as queued,
       (r.inputs -> 'fleet' ->> 'machines')::integer as machines,
       (r.plan ->> 'target')::integer as target,
       jsonb_array_length(r.actions) as actions_count,
       jsonb_array_length(r.errors) as errors_count,
       r.scaled_up, r.scaled_down,
       r.plan, r.actions, r.errors, r.inputs
  from scaler.runs r
 order by r.id desc;

comment on view admin.scaler_runs is
    'Every scaler reconcile: what it saw, planned and did, and what failed.';

-- ---------------------------------------------------------------------------------------------
-- Privileges: the scaler connects as the service role; users see none of this.
-- ---------------------------------------------------------------------------------------------

revoke all on schema scaler from public, anon, authenticated;
revoke all on all tables in schema scaler from public, anon, authenticated;
revoke all on all functions in schema scaler from public, anon, authenticated;
grant usage on schema scaler to service_role;
grant all on all tables in schema scaler to service_role;
grant execute on all functions in schema scaler to service_role;
revoke all on admin.spend_daily, admin.spend_by_job, admin.scaler_runs
    from public, anon, authenticated;
grant select on admin.spend_daily, admin.spend_by_job, admin.scaler_runs to service_role;
