"""The embedded default: the whole system on this machine, from one command.

- Postgres: a cluster from the machine's own binaries (app.pgserver) in `<data_dir>/pg/data`,
  reused across runs; a folder the `postgres` OS user can reach when we run as root and the data
  folder is private (root's home is mode 700). STEMFLEET_DATABASE_URL names an external database
  instead. Migrations and the Supabase bootstrap are applied on every start (idempotent).
- Storage: `<data_dir>/storage` (or S3 when STEMFLEET_STORAGE=s3).
- The API (`stemfleet api`) on 127.0.0.1 in dev-auth mode with one local token, and the scaler
  (`stemfleet scaler run`) with the `local` provider, which starts `stemfleet worker` processes
  on demand. Both are child processes, each in its own session and process group, so a Ctrl-C
  on the terminal reaches only us and we stop them in order: scaler (it stops its workers) first,
  then the API, then Postgres if we started it.

Nothing may outlive us: on Linux this process becomes a child subreaper, so a worker orphaned by
an exiting scaler is re-parented here (not to init) and the final sweep stops it; and the API and
the scaler get SIGTERM from the kernel should we die without stopping them (kill -9).

The parts, one job each:
- `state`: `<data_dir>/embedded.json`, how other commands find a running `stemfleet up`;
- `postgres`: the data folder's cluster, reused or started, and stopped only when ours;
- `supervision`: starting, tying and stopping child processes;
- `system`: `EmbeddedSystem`, which puts them together in order.
"""

from app.embedded.postgres import EmbeddedError
from app.embedded.state import EmbeddedState, read_state, state_path
from app.embedded.system import EmbeddedSystem

__all__ = [
    "EmbeddedError",
    "EmbeddedState",
    "EmbeddedSystem",
    "read_state",
    "state_path",
]
