-- Supabase Realtime: a Supabase-client user gets live status of their own jobs the Supabase way
-- (supabase.channel(...).on('postgres_changes', {table: 'jobs'}, ...)), as API users get SSE.
-- Realtime streams the changes of the tables in the `supabase_realtime` publication and delivers
-- each one only to subscribers whose JWT may select the new row: the jobs table's RLS policy
-- (a user reads only their own jobs) decides who sees what; nothing else is needed.
--
-- Only where Supabase made the publication: on a bare Postgres (tests, the embedded default)
-- this migration does nothing. Running it again changes nothing.
do $migration$
begin
    if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
        raise notice 'stemfleet: no supabase_realtime publication here (not Supabase): skipped';
        return;
    end if;
    if not exists (
        select 1 from pg_publication_tables
         where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'jobs'
    ) then
        alter publication supabase_realtime add table public.jobs;
    end if;
end
$migration$;
