-- A worker that cannot run where it was put (a GPU worker without a usable GPU: a CPU-only torch
-- build, a driver mismatch, a pod resumed with zero GPUs) records why on its `workers` row and
-- exits, so the scaler replaces the machine. `stop_reason` says why a worker stopped when it was
-- not an orderly end.

alter table public.workers add column stop_reason text;

create function queue.worker_refused(
    p_machine_id text,
    p_provider text,
    p_gpu text,
    p_region text,
    p_reason text,
    p_now timestamptz default null
) returns public.workers
language plpgsql as $$
declare
    v_worker public.workers;
begin
    v_worker := queue.register_worker(p_machine_id, p_provider, p_gpu, p_region, p_now);
    update public.workers
       set state = 'stopped', stopped_at = coalesce(p_now, now()), idle_since = null,
           stop_reason = p_reason
     where id = v_worker.id
    returning * into v_worker;
    return v_worker;
end;
$$;

revoke all on function queue.worker_refused(text, text, text, text, text, timestamptz)
    from public, anon, authenticated;
grant execute on function queue.worker_refused(text, text, text, text, text, timestamptz)
    to service_role;
