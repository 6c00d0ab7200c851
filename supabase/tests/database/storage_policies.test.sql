-- pgTAP, for `supabase test db` on the local Supabase stack (`supabase start`): the stemfleet
-- bucket and its policies on the real Supabase Storage schema. The suite (tests/
-- test_deploy_migrations.py) checks the same rules on a stand-in of that schema.
begin;
create extension if not exists pgtap with schema extensions;
select plan(10);

select ok(
    exists (select 1 from storage.buckets where id = 'stemfleet' and not public),
    'the stemfleet bucket exists and is private'
);
select policies_are(
    'storage', 'objects',
    array[
        'stemfleet_inputs_insert_own', 'stemfleet_inputs_select_own',
        'stemfleet_inputs_update_own', 'stemfleet_inputs_delete_own',
        'stemfleet_outputs_select_own'
    ],
    'storage.objects carries the stemfleet policies'
);

-- user A
set local role authenticated;
select set_config(
    'request.jwt.claims',
    '{"sub": "11111111-1111-4111-8111-111111111111", "role": "authenticated"}', true
);

select lives_ok(
    $$ insert into storage.objects (bucket_id, name)
       values ('stemfleet', 'inputs/11111111-1111-4111-8111-111111111111/song.mp3') $$,
    'a user uploads under inputs/<their id>/'
);
select throws_ok(
    $$ insert into storage.objects (bucket_id, name)
       values ('stemfleet', 'inputs/22222222-2222-4222-8222-222222222222/song.mp3') $$,
    '42501', null,
    'a user cannot upload under another user''s prefix'
);
select throws_ok(
    $$ insert into storage.objects (bucket_id, name)
       values ('stemfleet', 'outputs/33333333-3333-4333-8333-333333333333/vocals.wav') $$,
    '42501', null,
    'a user cannot write outputs'
);
select lives_ok(
    $$ insert into public.jobs (input_key)
       values ('inputs/11111111-1111-4111-8111-111111111111/song.mp3') $$,
    'a user inserts a queued job'
);
select throws_ok(
    $$ insert into public.jobs (input_key)
       values ('inputs/22222222-2222-4222-8222-222222222222/song.mp3') $$,
    '42501', null,
    'a user cannot submit a job on another user''s upload'
);

-- a worker writes stems for A's job and for somebody else's
reset role;
insert into storage.objects (bucket_id, name)
select 'stemfleet', 'outputs/' || id || '/vocals.wav'
  from public.jobs where user_id = '11111111-1111-4111-8111-111111111111';
insert into storage.objects (bucket_id, name)
values ('stemfleet', 'outputs/33333333-3333-4333-8333-333333333333/vocals.wav'),
       ('stemfleet', 'inputs/22222222-2222-4222-8222-222222222222/other.mp3');

set local role authenticated;
select set_config(
    'request.jwt.claims',
    '{"sub": "11111111-1111-4111-8111-111111111111", "role": "authenticated"}', true
);
select is(
    (select count(*) from storage.objects
      where bucket_id = 'stemfleet' and name like 'outputs/%')::integer,
    1,
    'a user reads the outputs of their own jobs only'
);
select is(
    (select count(*) from storage.objects
      where bucket_id = 'stemfleet' and name like 'inputs/%')::integer,
    1,
    'a user reads their own inputs only'
);

-- user B
select set_config(
    'request.jwt.claims',
    '{"sub": "22222222-2222-4222-8222-222222222222", "role": "authenticated"}', true
);
select is(
    (select count(*) from storage.objects
      where bucket_id = 'stemfleet' and name like 'outputs/%')::integer,
    0,
    'another user sees none of those outputs'
);

select * from finish();
rollback;
