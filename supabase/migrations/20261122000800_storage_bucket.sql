-- Supabase Storage: the bucket stemfleet reads inputs from and writes stems to, and which objects
-- a signed-in user may touch. Object layout (app/storage.py):
--
--   inputs/{user id}/...   a user uploads only under their own id, and may read, replace or
--                          delete what is there
--   outputs/{job id}/...   stems, written by workers; a user may read those of their own jobs
--
-- Workers and the API use the S3 endpoint with S3 access keys, which act as the service role and
-- bypass these policies. The bucket name must equal STEMFLEET_S3_BUCKET (default "stemfleet").
--
-- Only where Supabase Storage exists (schema `storage`): on a bare Postgres (tests, the embedded
-- default) this migration does nothing. Policies are created with format() so the statement text
-- names no object that a bare database will not have.

do $migration$
declare
    v_bucket constant text := 'stemfleet';
    -- the id as text when `name` is <prefix>/<uuid>/..., else null
    v_owner_part constant text := '(storage.foldername(name))[2]';
    v_is_uuid constant text :=
        '~ ''^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$''';
    v_own_input text;
    v_own_output text;
    v_policy record;
begin
    if to_regnamespace('storage') is null then
        raise notice 'stemfleet: no storage schema here (not Supabase): bucket and policies skipped';
        return;
    end if;

    insert into storage.buckets (id, name, public)
    values (v_bucket, v_bucket, false)
    on conflict (id) do nothing;

    v_own_input := format(
        'bucket_id = %L and (storage.foldername(name))[1] = ''inputs'' '
        'and %s = (select auth.uid())::text',
        v_bucket, v_owner_part);
    -- CASE keeps the uuid cast from ever seeing a part that is not one.
    v_own_output := format(
        'bucket_id = %L and (storage.foldername(name))[1] = ''outputs'' '
        'and case when %s %s then exists ('
        'select 1 from public.jobs j where j.id = (%s)::uuid and j.user_id = (select auth.uid())'
        ') else false end',
        v_bucket, v_owner_part, v_is_uuid, v_owner_part);

    for v_policy in
        select * from (values
            ('stemfleet_inputs_insert_own', 'insert', null, v_own_input),
            ('stemfleet_inputs_select_own', 'select', v_own_input, null),
            ('stemfleet_inputs_update_own', 'update', v_own_input, v_own_input),
            ('stemfleet_inputs_delete_own', 'delete', v_own_input, null),
            ('stemfleet_outputs_select_own', 'select', v_own_output, null)
        ) as p(name, command, using_expr, check_expr)
    loop
        execute format('drop policy if exists %I on storage.objects', v_policy.name);
        execute format(
            'create policy %I on storage.objects as permissive for %s to authenticated%s%s',
            v_policy.name,
            v_policy.command,
            coalesce(' using (' || v_policy.using_expr || ')', ''),
            coalesce(' with check (' || v_policy.check_expr || ')', ''));
    end loop;
end;
$migration$;
