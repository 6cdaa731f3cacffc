"""Stopping clearly weak candidates inside the early-stop budget: asynchronous successive halving (ASHA, Li et al.
2020), the multi-fidelity scheduler of Ray Tune and Syne Tune, on BlockQNN's own low-fidelity proxy.

A rule (``conf/stopping/``) turns the learning curves of this run's candidates so far into *cutoffs*: at each rung
epoch, the validation accuracy a candidate must reach there to go on. The loop hands them out with each block (the
workers need no channel back); ``blockqnn.fit.RungStop``, a Lightning callback, stops ``fit`` of a candidate that
falls short. No torch here: the search process reads it. In sync mode the loop fixes the cutoffs for a whole
iteration from the iterations before it, so a resumed search stays bit-identical; in async mode each block gets the
cutoffs of the moment it is dispatched.

A stopped candidate is a finished outcome (status ``stopped``) with the epochs it trained and its curve: never
retrained, reused by a cached twin, learnt from at its rung accuracy as is (docs/method.md#stopping-weak-candidates
says why), and left out of the top-k, which ranks only blocks that trained the full budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from blockqnn.candidate import Candidate, Status
from blockqnn.schema import POSITIVE, declared, member, setting

Cutoffs = Mapping[int, float]  # epoch -> the accuracy a candidate must reach there to go on


@member
class NoStoppingSettings:
    """``stopping=none``: nothing to set."""


@declared("stopping", NoStoppingSettings)
class NoStopping:
    """The paper's behaviour: every candidate trains the whole early-stop budget."""

    rungs: tuple[int, ...] = ()
    max_epochs = 0

    def cutoffs(self, reached: Mapping[int, Sequence[float]]) -> Cutoffs | None:
        return None


@member
class ASHASettings:
    """``stopping=asha`` (conf/stopping/asha.yaml), and ``ASHA``'s arguments."""

    eta: int = setting(ge=2)
    min_epoch: int = setting(**POSITIVE)
    max_epochs: int = setting(**POSITIVE)
    rungs: list[int] | None = setting()  # null: min_epoch * eta**k below max_epochs

    @staticmethod
    def rule(values: Mapping[str, Any]) -> str | None:
        last, rungs = values.get("max_epochs", 1), values.get("rungs")
        if rungs:
            bad = [r for r in rungs if not 1 <= r < last]
            if bad:
                return f"rungs={list(rungs)}: expected epochs from 1 to below trainer.max_epochs ({last})"
        elif values.get("min_epoch", 1) >= last:
            return (f"min_epoch={values['min_epoch']}: no rung below trainer.max_epochs ({last}); lower it, or use "
                    "stopping=none")
        return None


@declared("stopping", ASHASettings, member="asha")
class ASHA:
    """At each rung a candidate goes on only if its accuracy there is in the top ``1/eta`` of what this run's
    candidates reached at that rung so far (fewer than ``eta`` seen: it goes on). Rungs: ``rungs`` as given, else
    ``min_epoch * eta**k`` below ``max_epochs`` (the last epoch is never a rung: it is the full budget). Defaults:
    conf/stopping/asha.yaml (``max_epochs`` is the recipe's: always given)."""

    def __init__(self, *, eta: int, min_epoch: int, max_epochs: int, rungs: Sequence[int] | None) -> None:
        self.eta, self.max_epochs = eta, max_epochs
        self.rungs = tuple(sorted(rungs)) if rungs else geometric_rungs(min_epoch, eta, max_epochs)

    def cutoffs(self, reached: Mapping[int, Sequence[float]]) -> Cutoffs | None:
        """``reached``: per rung epoch, the accuracies candidates had there (any order)."""
        cutoffs = {}
        for rung in self.rungs:
            values = sorted(reached.get(rung, ()), reverse=True)
            if len(values) >= self.eta:
                cutoffs[rung] = values[len(values) // self.eta - 1]
        return cutoffs or None


def geometric_rungs(min_epoch: int, eta: int, max_epochs: int) -> tuple[int, ...]:
    rungs, epoch = [], min_epoch
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= eta
    return tuple(rungs)


class Rungs:
    """What candidates reached at each rung, by the iteration they belong to (sync mode fixes an iteration's
    cutoffs from the iterations before it)."""

    def __init__(self, rungs: Iterable[int]) -> None:
        self._reached: dict[int, list[tuple[int, float]]] = {r: [] for r in rungs}

    def observe(self, candidate: Candidate) -> None:
        """A finished candidate's curve (cached copies and failures do not count)."""
        curve = candidate.result.curve if candidate.result else None
        if candidate.cached or candidate.status == Status.FAILED or not curve:
            return
        for rung, values in self._reached.items():
            if rung <= len(curve) and curve[rung - 1] is not None:
                values.append((candidate.iteration, curve[rung - 1]))

    def before(self, iteration: int | None = None) -> dict[int, list[float]]:
        """Per rung, the accuracies of candidates of iterations before ``iteration`` (None: all)."""
        return {rung: [acc for it, acc in values if iteration is None or it < iteration]
                for rung, values in self._reached.items()}
