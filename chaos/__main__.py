"""`python -m chaos [--rounds N] [--seed S]` (what `make chaos` runs). CHAOS_ROUNDS and
CHAOS_SEED set the same from the environment; without a seed one is drawn and printed."""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys

from app.log import configure
from chaos.faults import DECK, FAULTS
from chaos.run import Config, run
from chaos.system import Tuning

DEFAULT_ROUNDS = 16  # two decks (chaos.faults.DECK); a few minutes on 2 cores


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}: not an integer: {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument(
        "--rounds",
        type=int,
        default=_env_int("CHAOS_ROUNDS") or DEFAULT_ROUNDS,
        help=f"rounds to play (CHAOS_ROUNDS; default {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=_env_int("CHAOS_SEED"),
        help="the RNG's seed (CHAOS_SEED; default: a random one, printed)",
    )
    parser.add_argument("--workers", type=int, default=Tuning.workers, help="worker processes")
    parser.add_argument(
        "--lease", type=float, default=Tuning.lease, help="the jobs' lease, seconds"
    )
    parser.add_argument(
        "--faults",
        default=",".join(DECK),
        help=f"the deck of faults, comma-separated (default: {','.join(DECK)})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's folder when it passes")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    deck = tuple(name.strip() for name in args.faults.split(",") if name.strip())
    unknown = sorted(set(deck) - set(FAULTS))
    if unknown or not deck:
        parser.error(f"--faults: unknown {unknown or 'empty'}; choose from {', '.join(FAULTS)}")
    configure("WARNING", json=False)
    for noisy in ("werkzeug", "httpx"):  # moto's request log, the API client's requests
        logging.getLogger(noisy).setLevel(logging.WARNING)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    tuning = Tuning(workers=args.workers, lease=args.lease)
    return run(Config(rounds=args.rounds, seed=seed, tuning=tuning, deck=deck, keep=args.keep))


if __name__ == "__main__":
    sys.exit(main())
