-- What stopped machines cost: a provider may bill a stopped machine (its disk, e.g. a RunPod
-- volume), so each machine reports a stopped price besides its running one. A stretch of time a
-- machine spent stopped (or failed) at a nonzero stopped price is a parked run; scaler.spend
-- counts parked runs with the billed ones, so the daily and monthly budgets include them.
-- A parked run opens when the provider is seen reporting the machine stopped (at the time it
-- says the machine stopped) and closes when the machine is seen started, destroyed or gone.

create table scaler.parked_runs (
    id bigint generated always as identity primary key,
    provider text not null,
    machine_id text not null check (machine_id <> ''),
    hourly_usd numeric(12, 6) not null check (hourly_usd >= 0),
    started_at timestamptz not null,
    stopped_at timestamptz,
    constraint parked_runs_order check (stopped_at is null or stopped_at >= started_at)
);

comment on table scaler.parked_runs is
    'Time worker machines spent stopped at a nonzero stopped price (e.g. a disk kept).';

create unique index parked_runs_one_open on scaler.parked_runs (provider, machine_id)
    where stopped_at is null;
create index parked_runs_started on scaler.parked_runs (started_at);
create index parked_runs_stopped on scaler.parked_runs (stopped_at);

-- p_machines: the provider's whole list, [{"id", "stopped_hourly_usd", "parked": bool,
-- "state_since"}] (parked: stopped or failed). Returns the changes ('parked' | 'unparked').
create function scaler.reconcile_parked(
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
        select distinct on (m.id) m.id as machine_id, m.stopped_hourly_usd, m.parked,
               m.state_since
          from jsonb_to_recordset(coalesce(p_machines, '[]'::jsonb))
               as m(id text, stopped_hourly_usd double precision, parked boolean,
                    state_since timestamptz)
         order by m.id
    ), closed as (
        update scaler.parked_runs r
           set stopped_at = greatest(r.started_at, v_now)
         where r.provider = p_provider and r.stopped_at is null
           and not exists (select 1 from seen s
                            where s.machine_id = r.machine_id and s.parked
                              and s.stopped_hourly_usd > 0)
        returning 'unparked'::text, r.machine_id, r.stopped_at
    ), opened as (
        insert into scaler.parked_runs (provider, machine_id, hourly_usd, started_at)
        select p_provider, s.machine_id, s.stopped_hourly_usd,
               least(v_now, coalesce(s.state_since, v_now))
          from seen s
         where s.parked and s.stopped_hourly_usd > 0
           and not exists (select 1 from scaler.parked_runs r
                            where r.provider = p_provider and r.machine_id = s.machine_id
                              and r.stopped_at is null)
        on conflict do nothing
        returning 'parked'::text, parked_runs.machine_id, parked_runs.started_at
    )
    select * from closed
    union all
    select * from opened;
end;
$$;

-- Money spent so far today and this month (UTC), and the hourly rate now: billed machine runs
-- and parked (stopped, still billed) ones.
create or replace function scaler.spend(p_now timestamptz default null)
returns table (today_usd double precision, month_usd double precision,
               hourly_usd double precision)
language sql stable as $$
    with bounds as (
        select coalesce(p_now, now()) as now_at,
               date_trunc('day', coalesce(p_now, now()), 'UTC') as day_start,
               date_trunc('month', coalesce(p_now, now()), 'UTC') as month_start
    ), runs as (
        select r.hourly_usd, r.started_at, r.stopped_at from scaler.machine_runs r
        union all
        select p.hourly_usd, p.started_at, p.stopped_at from scaler.parked_runs p
    ), spans as (
        select r.hourly_usd::double precision as hourly, r.started_at,
               least(coalesce(r.stopped_at, b.now_at), b.now_at) as ended_at,
               r.stopped_at is null as open, b.*
          from runs r, bounds b
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

revoke all on scaler.parked_runs from public, anon, authenticated;
grant all on scaler.parked_runs to service_role;
revoke all on function scaler.reconcile_parked(text, jsonb, timestamptz)
    from public, anon, authenticated;
grant execute on function scaler.reconcile_parked(text, jsonb, timestamptz) to service_role;
revoke all on function scaler.spend(timestamptz) from public, anon, authenticated;
grant execute on function scaler.spend(timestamptz) to service_role;
