"""The demo's workload: every waiter to park and every signal to send, drawn from a seed.

Run ids are fresh random UUIDs; the seed decides everything else (which runs are late, which
signals race, the order of the sends).
"""

from __future__ import annotations

import enum
import json
import random
import uuid
from dataclasses import dataclass

#: Share of runs whose steps get a short deadline and are signalled only after it passed.
LATE_RUN_SHARE = 0.15
#: Share of on-time signals sent twice, racing.
DUPLICATE_SHARE = 0.20
#: Signals to never-registered run ids, as a share of the number of runs.
UNKNOWN_RUN_SHARE = 0.05
#: Share of on-time steps registered a second time while the signals are being sent.
REREGISTER_SHARE = 0.10
#: Range of the short deadlines, in seconds after registration.
LATE_DEADLINE_SECONDS = (0.3, 1.0)

_APPROVERS = ("amira", "bjorn", "chen", "dolores", "emeka", "fatima", "gustavo", "hana")

WaiterKey = tuple[uuid.UUID, str]


@dataclass(frozen=True, slots=True)
class Step:
    """A step every run parks, and the signal that releases it."""

    key: str
    signal_name: str


#: The two approvals of every run.
STEPS = (Step("manager-approval", "manager_approved"), Step("finance-approval", "finance_approved"))


class SendKind(enum.Enum):
    """Why a signal is sent."""

    #: The only sender of a pending waiter.
    ON_TIME = "on-time"
    #: One of two senders racing for one waiter: exactly one of them may win.
    RACING = "racing pair"
    #: Sent after the waiter's deadline passed.
    LATE = "late"
    #: Sent to a run id that was never registered.
    UNKNOWN = "unknown run"


@dataclass(frozen=True, slots=True)
class WaiterPlan:
    """One step to park.

    Attributes:
        run_id: The run.
        step: The step and its signal.
        deadline_seconds: For a late run, its deadline in seconds after registration.
        reregister: Register it again while the signals are being sent.
    """

    run_id: uuid.UUID
    step: Step
    deadline_seconds: float | None
    reregister: bool

    @property
    def key(self) -> WaiterKey:
        """(run_id, step_key), the waiter's identity."""
        return (self.run_id, self.step.key)


@dataclass(frozen=True, slots=True)
class Send:
    """One signal to deliver.

    Attributes:
        sender_id: Unique per send; carried in the payload.
        run_id: The run it goes to.
        step_key: The step it is meant for (for an unknown run, the one it would be).
        signal_name: The signal.
        kind: Why it is sent.
        payload_json: The JSON payload, naming the sender.
    """

    sender_id: str
    run_id: uuid.UUID
    step_key: str
    signal_name: str
    kind: SendKind
    payload_json: str

    @property
    def key(self) -> WaiterKey:
        """The waiter this send is meant for."""
        return (self.run_id, self.step_key)


@dataclass(frozen=True, slots=True)
class RacingPair:
    """Two sends of one signal, released together by a barrier."""

    first: Send
    second: Send


@dataclass(frozen=True, slots=True)
class Reregistration:
    """Register an already registered step again, as a re-run step does."""

    waiter: WaiterPlan


#: What the on-time phase submits, in order.
Task = Send | RacingPair | Reregistration


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything the demo will do, decided up front from the seed.

    Attributes:
        seed: The seed the plan was drawn from.
        waiters: Every step to park.
        on_time: The on-time phase, in submission order (sends, racing pairs, unknown-run
            sends and mid-run re-registrations, shuffled).
        late: The signals sent after their deadlines passed.
    """

    seed: int
    waiters: tuple[WaiterPlan, ...]
    on_time: tuple[Task, ...]
    late: tuple[Send, ...]

    @property
    def sends(self) -> tuple[Send, ...]:
        """Every send, on-time and late."""
        sends: list[Send] = []
        for task in self.on_time:
            if isinstance(task, Send):
                sends.append(task)
            elif isinstance(task, RacingPair):
                sends += (task.first, task.second)
        return (*sends, *self.late)

    @property
    def pairs(self) -> tuple[RacingPair, ...]:
        """The racing pairs."""
        return tuple(task for task in self.on_time if isinstance(task, RacingPair))

    @property
    def reregistered(self) -> tuple[WaiterPlan, ...]:
        """The steps re-registered mid-run."""
        return tuple(task.waiter for task in self.on_time if isinstance(task, Reregistration))


def make_plan(runs: int, seed: int) -> Plan:
    """Draw the workload for ``runs`` runs; run ids are fresh, everything else follows ``seed``.

    Args:
        runs: Number of workflow runs (each parks one waiter per step of :data:`STEPS`).
        seed: Seed of the plan's random choices.
    """
    rng = random.Random(seed)
    senders = iter(range(1, 1_000_000_000))

    def send(run_id: uuid.UUID, step: Step, kind: SendKind) -> Send:
        sender_id = f"sender-{next(senders):06d}"
        payload = {
            "sender_id": sender_id,
            "decision": "approved",
            "approver": rng.choice(_APPROVERS),
            "step": step.key,
        }
        return Send(sender_id, run_id, step.key, step.signal_name, kind, json.dumps(payload))

    run_ids = [uuid.uuid4() for _ in range(runs)]
    late_runs = set(rng.sample(run_ids, min(_share(runs, LATE_RUN_SHARE), max(runs - 1, 0))))
    low, high = LATE_DEADLINE_SECONDS
    deadlines = {run_id: round(rng.uniform(low, high), 3) for run_id in run_ids}

    on_time_steps = [
        (run_id, step) for run_id in run_ids if run_id not in late_runs for step in STEPS
    ]
    racing = set(rng.sample(range(len(on_time_steps)), _share(len(on_time_steps), DUPLICATE_SHARE)))
    again = set(rng.sample(range(len(on_time_steps)), _share(len(on_time_steps), REREGISTER_SHARE)))

    waiters: list[WaiterPlan] = []
    for run_id in run_ids:
        for step in STEPS:
            is_late = run_id in late_runs
            reregister = not is_late and on_time_steps.index((run_id, step)) in again
            waiters.append(
                WaiterPlan(run_id, step, deadlines[run_id] if is_late else None, reregister)
            )

    tasks: list[Task] = []
    for index, (run_id, step) in enumerate(on_time_steps):
        if index in racing:
            first = send(run_id, step, SendKind.RACING)
            tasks.append(RacingPair(first, send(run_id, step, SendKind.RACING)))
        else:
            tasks.append(send(run_id, step, SendKind.ON_TIME))
    for _ in range(_share(runs, UNKNOWN_RUN_SHARE)):
        tasks.append(send(uuid.uuid4(), rng.choice(STEPS), SendKind.UNKNOWN))
    rng.shuffle(tasks)
    # Mid-run: somewhere in the middle half of the sends, never before the first of them.
    for waiter in (w for w in waiters if w.reregister):
        tasks.insert(
            rng.randint(len(tasks) // 4, max(3 * len(tasks) // 4, 1)), Reregistration(waiter)
        )

    late = [
        send(w.run_id, w.step, SendKind.LATE) for w in waiters if w.deadline_seconds is not None
    ]
    rng.shuffle(late)
    return Plan(seed, tuple(waiters), tuple(tasks), tuple(late))


def _share(total: int, fraction: float) -> int:
    # At least one of each kind whenever there is anything to choose from, so a small demo
    # still exercises every outcome.
    return 0 if total == 0 else min(total, max(1, round(total * fraction)))
