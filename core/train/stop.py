"""When training stops: signals (finish the step, then save), DDP agreement, the time budget,
and the stop a callback asked for. Every rank takes the same path, decided at the same points.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable

from ..distributed import agree_stop, main_value
from .callbacks import Callback, TimeBudget

log = logging.getLogger(__name__)


# SIGUSR2: SLURM's warning before a time limit or preemption (`sbatch --signal`); it may come
# twice (to the whole job step, and forwarded by a supervising process), so a repeat is ignored,
# and so is the SIGTERM SLURM sends when the time is up: the stop the warning began goes on.
WARNING_SIGNALS = (signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()


class SignalCatcher:
    """First SIGINT/SIGTERM/SIGUSR2: finish the current step, save, stop cleanly (exit 128 + its number).

    A second signal exits at once with 128 + its number, after `on_exit_now` (which writes
    summary.json as `interrupted`; last.pt then holds the last completed epoch); a repeated
    SIGUSR2, or a SIGTERM after it (SLURM's at the time limit), changes nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.on_exit_now: Callable[[], None] | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalCatcher":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, *WARNING_SIGNALS):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and (signum in WARNING_SIGNALS or (
                self.signum in WARNING_SIGNALS and signum == signal.SIGTERM)):
            if signum == signal.SIGTERM:
                log.warning("\nreceived SIGTERM after the warning signal: still finishing this step, then saving")
            return
        if self.signum is not None:
            log.warning(f"\nreceived {signal.Signals(signum).name} again: exiting now")
            try:
                if self.on_exit_now is not None:
                    self.on_exit_now()
            finally:
                os._exit(128 + signum)
        self.signum = signum
        log.warning(f"\nreceived {signal.Signals(signum).name}: finishing this step, then saving and stopping "
                    "(Ctrl-C again to exit at once)")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StopController(Callback):
    """Whether to leave the epoch (after each step) and whether to train another (after each).

    `stop` is the (status, reason) that ends training: the first a callback `request`s, else a
    spent time budget; under DDP rank 0's decides for every rank. A final stop is resume state
    (resuming a finished run only re-tests it); an `interrupted` one is not.
    """

    def __init__(self, world: int, budget: TimeBudget) -> None:
        self.world, self.budget = world, budget
        self.signals = SignalCatcher()
        self.peer_signal: list[int] = []  # DDP: a signal another rank received stops this rank too
        self.stop: tuple[str, str] | None = None

    def __enter__(self) -> "StopController":
        self.signals.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.signals.__exit__(*exc)

    @property
    def on_exit_now(self) -> Callable[[], None] | None:
        return self.signals.on_exit_now

    @on_exit_now.setter
    def on_exit_now(self, action: Callable[[], None] | None) -> None:
        self.signals.on_exit_now = action

    def signum(self) -> int | None:
        """The signal that stopped this rank (its own, or a peer's)."""
        return self.signals.signum or (self.peer_signal or [None])[0]

    def interrupted(self) -> bool:
        return self.signals.signum is not None or bool(self.peer_signal)

    def agreed(self, over_budget: bool = False) -> tuple[bool, bool]:
        """(interrupted, over budget) as every rank sees them. Under DDP a collective, called at
        the same points on every rank: decisions that lead to collectives use it."""
        if self.world == 1:
            return self.interrupted(), over_budget
        signum, over_budget = agree_stop(self.signum(), over_budget)
        if signum and not self.interrupted():
            self.peer_signal.append(signum)
        return signum is not None, over_budget

    def should_stop(self) -> bool:
        """After every step, on every rank: all leave the epoch together."""
        return any(self.agreed(self.budget.spent()))

    def request(self, status: str, reason: str) -> None:
        """End training after this epoch (the first request wins)."""
        if self.stop is None:
            self.stop = (status, reason)

    def decide(self) -> None:
        """After an epoch's callbacks: a spent budget stops too; rank 0's decision holds for all."""
        if self.stop is None and self.budget.spent():
            self.stop = ("completed", "time budget spent")
        if self.world > 1:  # rank 0's clock and hook decide for every rank
            self.stop = main_value(self.stop)

    def state_dict(self) -> dict[str, Any]:
        stop = self.stop
        return {"stop": list(stop) if stop and stop[0] != "interrupted" else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stop = tuple(state["stop"]) if state.get("stop") else None  # type: ignore[assignment]
