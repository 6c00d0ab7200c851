"""`make chaos`: a reliability suite that runs the real system on this machine and breaks it.

The embedded default (app.embedded: a throwaway Postgres, the API, the scaler with the local
provider starting `stemfleet worker` processes running Demucs' tiny model), with its storage on
moto's S3 server behind a fault-injecting HTTP proxy on loopback. Over many rounds, with a seeded
RNG, it SIGKILLs workers mid-job, restarts and crashes Postgres, and makes storage fail and stall;
then it asserts that nothing was lost, nothing succeeded twice, nothing is stuck and no killed
worker left files behind, and prints its figures. `python -m chaos --help`.

Modules: `loopback` (loopback HTTP servers), `proxy` (the storage fault proxy), `receiver`
(the webhook receiver), `observer` (every job transition, through LISTEN), `system` (bringing
it all up, and the faults' levers), `faults` (the fault menu), `checks` (the assertions), `run`
(the rounds), `report` (the figures), `__main__` (the command line).
"""
