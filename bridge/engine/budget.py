"""The daily budget: a job about to be submitted reserves its estimated cost, or waits for tomorrow. With a
team journal the budget is the team's: reservations are serialized in the database."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from bridge.common.cost import PriceTable
from bridge.common.errors import BridgeError
from bridge.engine.estimate import estimate
from bridge.engine.journal import JobJournal, JobRow
from bridge.presets.recipe import Recipe


class BudgetWait(Exception):
    """The job would overrun today's budget; it waits until `until` (a time.time() value)."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until


class DailyBudget:
    def __init__(self, journal: JobJournal, limit: float | None, prices: PriceTable, billed: bool = True) -> None:
        self.journal, self.limit, self.prices = journal, limit, prices
        self.billed = billed  # False on a stand-in: its jobs spend nothing
        self._lock = threading.Lock()

    def reserve(self, row: JobRow, recipe: Recipe) -> None:
        """Journal the job's estimated cost, or raise BudgetWait when today's spending would pass the limit."""
        if self.limit is None or not self.billed:
            return
        try:  # what is sent: the part cut at the file's end, or its audition window, as the estimate says
            cost = estimate(row.request, recipe, self.prices).estimated_cost
        except (BridgeError, RuntimeError, OSError):
            return  # the pipeline reports the unreadable source or the span it refuses properly
        midnight = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)
        with self._lock:  # check and reserve at once: parallel workers can't all squeeze in
            self._reserve(row, self.limit, cost, midnight)

    def _reserve(self, row: JobRow, limit: float, estimate: float, midnight: datetime) -> None:
        # one transaction in the journal: in a team, every daemon reserves from the same budget
        spent = self.journal.reserve_budget(row.view.job_id, estimate, midnight.timestamp(), limit)
        if spent is not None:
            tomorrow = (midnight + timedelta(days=1)).timestamp()
            raise BudgetWait(
                f"Daily budget reached: {spent:.2f} of {limit:.2f} {self.prices.currency} spent today"
                f"{' by the team' if self.journal.team else ''}, this job needs about {estimate:.2f}. It waits "
                "until tomorrow, or raise daily_budget in the config.", until=min(tomorrow, time.time() + 60))
