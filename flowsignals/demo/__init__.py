"""``flowsignals demo``: a concurrent approval-flow workload that checks the store's guarantees.

Every run parks two steps, ``manager-approval`` (signal ``manager_approved``) and
``finance-approval`` (signal ``finance_approved``). A thread pool then sends the approvals:

* on time, once per step; about 20% of them twice at the same instant (a barrier releases both
  senders together), so the two deliveries really race for one waiter;
* late, for about 15% of the runs, which got a deadline of 0.3-1 s and are signalled only after
  it passed;
* to about 5% as many run ids that were never registered.

Some steps are re-registered while the signals fly, as a re-run workflow step would do. Every
waiter is then read back and the outcomes are checked against what the store promises. Each
payload names its sender, so the check knows exactly which sender's payload a waiter must hold.

Run ids are always fresh random UUIDs, so the demo can run again and again on one database;
``--seed`` fixes only the shape of the workload (which runs are late, which signals race, the
order of the sends).

The package, one concept a module: :mod:`.plan` (the workload, drawn up front from the seed),
:mod:`.execution` (running it on a thread pool, timing each store call), :mod:`.verification`
(the invariants), :mod:`.report` (the readable summary) and :mod:`.session` (``run_demo``: the
database, given or a throwaway embedded server, and the exit code).
"""

from __future__ import annotations

from flowsignals.demo.execution import Execution, execute
from flowsignals.demo.plan import STEPS, Plan, Send, SendKind, Step, WaiterPlan, make_plan
from flowsignals.demo.report import render_report
from flowsignals.demo.session import run_demo
from flowsignals.demo.verification import Check, verify

__all__ = [
    "STEPS",
    "Check",
    "Execution",
    "Plan",
    "Send",
    "SendKind",
    "Step",
    "WaiterPlan",
    "execute",
    "make_plan",
    "render_report",
    "run_demo",
    "verify",
]
