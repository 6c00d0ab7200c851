-- Optional: the database runs the scaler every minute, with pg_cron calling the API's
-- authenticated POST /v1/admin/scaler/run through pg_net. An alternative to the `scaler` process
-- group in fly.toml or any other cron; running two schedules is safe (a scaler run holds an
-- advisory lock) but pointless.
--
-- Skipped where pg_cron or pg_net is not available (a bare Postgres, tests) or cannot be enabled
-- here (pg_cron lives in one database only). On Supabase both are available and the schedule is
-- created, but stays dormant (each tick does nothing) until the API's URL is configured. Nothing
-- secret is in this file; each tick reads, in this order:
--
--   the URL:   Vault secret `stemfleet_api_url`, else the setting `stemfleet.api_url`
--   the token: Vault secret `stemfleet_service_token`, else the setting `stemfleet.service_token`
--
--   select vault.create_secret('https://stemfleet.fly.dev', 'stemfleet_api_url');
--   select vault.create_secret('<STEMFLEET_SERVICE_TOKEN>', 'stemfleet_service_token');
--
-- Settings (`alter database postgres set stemfleet.api_url = '...'`) are for a Postgres without
-- Vault: every role can read a setting, so never keep the token in one where users run SQL.
-- By hand: select admin.schedule_scaler(); select admin.unschedule_scaler();
-- Each tick's HTTP result: select * from net._http_response order by created desc limit 5;

-- A Vault secret by name, else a database setting; null when neither is set.
create function admin.scaler_schedule_value(p_secret text, p_setting text) returns text
language plpgsql stable security definer set search_path = '' as $$
declare
    v_value text;
begin
    if to_regclass('vault.decrypted_secrets') is not null then
        execute 'select decrypted_secret from vault.decrypted_secrets where name = $1 '
                'order by created_at desc limit 1'
           into v_value using p_secret;
    end if;
    return coalesce(nullif(v_value, ''), nullif(pg_catalog.current_setting(p_setting, true), ''));
end;
$$;

-- One tick: ask the API to run the scaler once. Returns pg_net's request id, or null while no
-- URL is configured (the schedule is dormant). pg_net sends the request after this transaction
-- commits; its answer lands in net._http_response.
create function admin.scaler_tick() returns bigint
language plpgsql security definer set search_path = '' as $$
declare
    v_url text := admin.scaler_schedule_value('stemfleet_api_url', 'stemfleet.api_url');
    v_token text := admin.scaler_schedule_value('stemfleet_service_token', 'stemfleet.service_token');
    v_request bigint;
begin
    if v_url is null then
        raise notice 'stemfleet scaler schedule is dormant: no API URL (Vault secret '
                     'stemfleet_api_url or setting stemfleet.api_url)';
        return null;
    end if;
    if v_token is null then
        raise exception 'stemfleet scaler schedule: the API URL is set but no service token: '
                        'select vault.create_secret(''<STEMFLEET_SERVICE_TOKEN>'', '
                        '''stemfleet_service_token'')'
              using errcode = '22023';
    end if;
    if v_url !~ '^https?://' then
        raise exception 'stemfleet scaler schedule: the API URL % must start with https://', v_url
              using errcode = '22023';
    end if;
    select net.http_post(
               url := pg_catalog.rtrim(v_url, '/') || '/v1/admin/scaler/run',
               body := '{}'::jsonb,
               headers := pg_catalog.jsonb_build_object(
                   'Authorization', 'Bearer ' || v_token,
                   'Content-Type', 'application/json'),
               timeout_milliseconds := 55000)
      into v_request;
    return v_request;
end;
$$;

-- (Re)creates the pg_cron job `stemfleet-scaler`; returns its id. Needs pg_cron.
create function admin.schedule_scaler(p_schedule text default '* * * * *') returns bigint
language plpgsql as $$
declare
    v_job bigint;
begin
    if to_regnamespace('cron') is null then
        raise exception 'pg_cron is not enabled in this database: create extension pg_cron '
                        '(on Supabase: Database > Extensions), or run `stemfleet scaler run`'
              using errcode = '0A000';
    end if;
    execute 'select cron.schedule($1, $2, $3)'
       into v_job using 'stemfleet-scaler', p_schedule, 'select admin.scaler_tick()';
    return v_job;
end;
$$;

create function admin.unschedule_scaler() returns boolean
language plpgsql as $$
declare
    v_scheduled boolean := false;
begin
    if to_regnamespace('cron') is null then
        return false;
    end if;
    execute 'select exists (select 1 from cron.job where jobname = $1)'
       into v_scheduled using 'stemfleet-scaler';
    if v_scheduled then
        execute 'select cron.unschedule($1)' using 'stemfleet-scaler';
    end if;
    return v_scheduled;
end;
$$;

revoke all on function admin.scaler_schedule_value(text, text) from public, anon, authenticated;
revoke all on function admin.scaler_tick() from public, anon, authenticated;
revoke all on function admin.schedule_scaler(text) from public, anon, authenticated;
revoke all on function admin.unschedule_scaler() from public, anon, authenticated;

do $migration$
begin
    if (select count(*) from pg_catalog.pg_available_extensions
         where name in ('pg_cron', 'pg_net')) < 2 then
        raise notice 'stemfleet: pg_cron or pg_net is not available: no scaler schedule (run '
                     '`stemfleet scaler run`, or call POST /v1/admin/scaler/run from any cron)';
        return;
    end if;
    begin
        create extension if not exists pg_cron;
        create extension if not exists pg_net;
    exception when others then
        raise notice 'stemfleet: could not enable pg_cron / pg_net here (%): no scaler schedule',
                     sqlerrm;
        return;
    end;
    perform admin.schedule_scaler();
end;
$migration$;
