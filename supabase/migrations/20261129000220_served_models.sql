-- The models the fleet serves, checked when a job is inserted (by the API or a Supabase client),
-- so a job naming a model no worker can load is refused at submit with the list to choose from
-- (SQLSTATE SF004; the API answers 422) instead of failing on a worker.
--
-- Seeded with Demucs' published models (any worker with internet access loads them from the
-- hub). A worker adds its configured model and the models of its STEMFLEET_MODEL_REPO folder
-- when it starts, the API the same at its start. An operator adds or removes rows by hand:
--   insert into queue.served_models (name, source) values ('my_model', 'operator');

create table queue.served_models (
    name text primary key check (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    source text not null default 'operator' check (source in ('demucs', 'fleet', 'operator')),
    added_at timestamptz not null default now()
);

insert into queue.served_models (name, source)
values ('htdemucs', 'demucs'), ('htdemucs_ft', 'demucs'), ('htdemucs_6s', 'demucs'),
       ('hdemucs_mmi', 'demucs'), ('mdx', 'demucs'), ('mdx_extra', 'demucs'), ('mdx_q', 'demucs'),
       ('mdx_extra_q', 'demucs'), ('demucs_unittest', 'demucs');

create function queue.serve_models(p_names text[]) returns void
language sql as $$
    insert into queue.served_models (name, source)
    select distinct n, 'fleet' from unnest(p_names) as n
    on conflict (name) do nothing
$$;

create function queue.model_guard() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
    v_model text;
begin
    if pg_catalog.jsonb_typeof(new.params -> 'model') is distinct from 'string' then
        return new;  -- no model (the fleet's default), or not a name: params validation says why
    end if;
    v_model := new.params ->> 'model';
    perform 1 from queue.served_models where name = v_model;
    if not found then
        raise exception 'model % is not served by this fleet; choose one of: %',
              pg_catalog.quote_literal(v_model),
              (select pg_catalog.string_agg(name, ', ' order by name) from queue.served_models)
              using errcode = 'SF004',
                    hint = 'leave params.model out to use the fleet''s default model';
    end if;
    return new;
end;
$$;

create trigger jobs_model_guard before insert on public.jobs
    for each row execute function queue.model_guard();

revoke all on table queue.served_models from public, anon, authenticated;
grant all on table queue.served_models to service_role;
revoke all on function queue.serve_models(text[]) from public, anon, authenticated;
revoke all on function queue.model_guard() from public, anon, authenticated;
grant execute on function queue.serve_models(text[]) to service_role;
