-- Webhooks: an outbox of deliveries to jobs' callback_url, filled by a trigger when a job reaches
-- a final status (succeeded / failed / cancelled), however it got there (API, Supabase client
-- insert, worker, reaper, admin in the SQL editor). A dispatcher claims due deliveries with
-- SKIP LOCKED, POSTs them, and records every attempt; failures are retried with exponential
-- backoff until the delivery is older than the caller's maximum age.
--
-- The delivery id is the Standard Webhooks `webhook-id`: it stays the same across retries so a
-- receiver can deduplicate.

create type public.webhook_delivery_status as enum ('pending', 'delivered', 'failed');

create table public.webhook_deliveries (
    id uuid primary key default gen_random_uuid(),
    job_id uuid not null references public.jobs (id) on delete cascade,
    user_id uuid not null,
    url text not null check (url ~ '^https?://'),
    event_type text not null,
    payload jsonb not null,
    status public.webhook_delivery_status not null default 'pending',
    attempts integer not null default 0 check (attempts >= 0),
    next_attempt_at timestamptz not null,
    last_attempt_at timestamptz,
    last_status_code integer,
    last_error text,
    delivered_at timestamptz,
    created_at timestamptz not null
);

comment on table public.webhook_deliveries is
    'One row per webhook event to a job''s callback_url; the id is the webhook-id header.';

create index webhook_deliveries_due on public.webhook_deliveries (next_attempt_at, id)
    where status = 'pending';
create index webhook_deliveries_job on public.webhook_deliveries (job_id);

create table public.webhook_attempts (
    delivery_id uuid not null references public.webhook_deliveries (id) on delete cascade,
    attempt integer not null check (attempt >= 1),
    attempted_at timestamptz not null,
    status_code integer,
    error text,
    duration_ms double precision,
    primary key (delivery_id, attempt)
);

comment on table public.webhook_attempts is 'Every HTTP attempt of a webhook delivery.';

-- ---------------------------------------------------------------------------------------------
-- The outbox trigger
-- ---------------------------------------------------------------------------------------------

create function queue.enqueue_webhook() returns trigger
language plpgsql as $$
declare
    v_at timestamptz := coalesce(new.finished_at, new.updated_at, now());
    v_id uuid;
begin
    insert into public.webhook_deliveries (job_id, user_id, url, event_type, payload,
                                           next_attempt_at, created_at)
    values (new.id, new.user_id, new.callback_url, 'job.' || new.status::text,
            jsonb_build_object('type', 'job.' || new.status::text, 'timestamp', v_at,
                               'data', to_jsonb(new)),
            v_at, v_at)
    returning id into v_id;
    perform pg_notify('stemfleet_webhooks', v_id::text);
    return null;
end;
$$;

create trigger jobs_enqueue_webhook after update of status on public.jobs
    for each row
    when (new.callback_url is not null
          and new.status in ('succeeded', 'failed', 'cancelled')
          and old.status is distinct from new.status)
    execute function queue.enqueue_webhook();

-- ---------------------------------------------------------------------------------------------
-- Dispatcher functions
-- ---------------------------------------------------------------------------------------------

-- Claim up to p_limit due deliveries. The claim counts the attempt and pushes next_attempt_at
-- out by the lease, so a dispatcher that dies mid-send leaves the delivery due again later.
create function queue.claim_webhook_deliveries(
    p_limit integer default 10,
    p_lease_seconds double precision default 60,
    p_now timestamptz default null
) returns setof public.webhook_deliveries
language sql as $$
    with due as (
        select d.id
          from public.webhook_deliveries d
         where d.status = 'pending' and d.next_attempt_at <= coalesce(p_now, now())
         order by d.next_attempt_at, d.id
         limit greatest(p_limit, 0)
           for update skip locked
    )
    update public.webhook_deliveries d
       set attempts = d.attempts + 1,
           next_attempt_at = coalesce(p_now, now()) + make_interval(secs => p_lease_seconds)
      from due
     where d.id = due.id
    returning d.*;
$$;

-- Record one attempt. Delivered: done. Otherwise retried after queue.backoff(attempt) unless it
-- is not retryable or the retry would fall past created_at + p_max_age_seconds: then failed.
-- A stale attempt (the delivery was claimed again since) is recorded but changes nothing.
create function queue.record_webhook_attempt(
    p_delivery_id uuid,
    p_attempt integer,
    p_delivered boolean,
    p_status_code integer default null,
    p_error text default null,
    p_duration_ms double precision default null,
    p_retryable boolean default true,
    p_backoff_base_seconds double precision default 10,
    p_max_age_seconds double precision default 7200,
    p_now timestamptz default null
) returns public.webhook_deliveries
language plpgsql as $$
declare
    v_now timestamptz := coalesce(p_now, now());
    v_next timestamptz := v_now + queue.backoff(p_attempt, p_backoff_base_seconds);
    v_delivery public.webhook_deliveries;
begin
    insert into public.webhook_attempts (delivery_id, attempt, attempted_at, status_code, error,
                                         duration_ms)
    values (p_delivery_id, p_attempt, v_now, p_status_code, p_error, p_duration_ms)
    on conflict (delivery_id, attempt) do nothing;

    update public.webhook_deliveries d
       set status = case
                        when p_delivered then 'delivered'::public.webhook_delivery_status
                        when not p_retryable
                             or v_next > d.created_at + make_interval(secs => p_max_age_seconds)
                            then 'failed'::public.webhook_delivery_status
                        else 'pending'::public.webhook_delivery_status
                    end,
           next_attempt_at = case when p_delivered then d.next_attempt_at else v_next end,
           last_attempt_at = v_now,
           last_status_code = p_status_code,
           last_error = case when p_delivered then null else p_error end,
           delivered_at = case when p_delivered then v_now else null end
     where d.id = p_delivery_id and d.status = 'pending' and d.attempts = p_attempt
    returning * into v_delivery;
    if not found then
        select * into v_delivery from public.webhook_deliveries where id = p_delivery_id;
        if not found then
            raise exception 'webhook delivery % not found', p_delivery_id using errcode = 'SF002';
        end if;
    end if;
    return v_delivery;
end;
$$;

-- ---------------------------------------------------------------------------------------------
-- Reads for the API
-- ---------------------------------------------------------------------------------------------

-- 1-based place of a queued job in claim order (priority, then age); null unless queued.
create function queue.job_position(p_job_id uuid) returns integer
language sql stable as $$
    select (select count(*)::integer + 1
              from public.jobs o
             where o.status = 'queued'
               and (o.priority > j.priority
                    or (o.priority = j.priority and (o.created_at, o.id) < (j.created_at, j.id))))
      from public.jobs j
     where j.id = p_job_id and j.status = 'queued'
$$;

create view admin.webhook_deliveries as
select s.status,
       count(d.id)::integer as deliveries,
       min(d.created_at) as oldest_created_at,
       max(d.last_attempt_at) as last_attempt_at
  from unnest(enum_range(null::public.webhook_delivery_status)) as s(status)
  left join public.webhook_deliveries d on d.status = s.status
 group by s.status
 order by s.status;

-- ---------------------------------------------------------------------------------------------
-- Privileges: service role only
-- ---------------------------------------------------------------------------------------------

alter table public.webhook_deliveries enable row level security;
alter table public.webhook_attempts enable row level security;
revoke all on public.webhook_deliveries, public.webhook_attempts from public, anon, authenticated;
grant all on public.webhook_deliveries, public.webhook_attempts to service_role;

revoke all on function queue.enqueue_webhook(), queue.claim_webhook_deliveries(integer, double precision, timestamptz),
    queue.record_webhook_attempt(uuid, integer, boolean, integer, text, double precision, boolean,
                                 double precision, double precision, timestamptz),
    queue.job_position(uuid)
    from public, anon, authenticated;
grant execute on function queue.claim_webhook_deliveries(integer, double precision, timestamptz),
    queue.record_webhook_attempt(uuid, integer, boolean, integer, text, double precision, boolean,
                                 double precision, double precision, timestamptz),
    queue.job_position(uuid)
    to service_role;

revoke all on admin.webhook_deliveries from public, anon, authenticated;
grant select on admin.webhook_deliveries to service_role;
