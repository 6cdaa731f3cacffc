"""Search spaces as the agent sees them: states, legal actions, and how to explore among them.

A space is Markov: the state is the last action taken (the NSC tuple of the current layer), as in the paper,
so an agent needs nothing but ``start``, ``actions(state)``, ``exploration_probs(state)`` and ``is_final``.
Architectures travel through the rest of the system as text (``decode``), identified by ``canonical_hash``
(``decode_hashed`` gives both from one parse: the search loop's view of each sampled block); evolution changes
one a little (``mutate``), local search walks among those one change away (``neighbours``).

A space says how its architectures are scored: ``tabular`` spaces (a benchmark such as NAS-Bench-201) look every
accuracy up in a table (``TabularSpace``); the others are built into networks and trained.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

State = Hashable
Action = Hashable


class SearchSpace(Protocol):
    """What an agent needs of a space. Actions are hashable; ``repr`` of an action is its stable name."""

    start: State
    tabular: bool  # True: accuracies come from a table (``TabularSpace.lookup``); False: candidates are trained

    def actions(self, state: State) -> Sequence[Action]: ...

    def exploration_probs(self, state: State) -> np.ndarray: ...

    def is_final(self, action: Action) -> bool: ...

    def decode(self, actions: Sequence[Action]) -> str: ...

    def encode(self, arch: str) -> list[Action]: ...

    def canonical_hash(self, arch: str) -> str: ...

    def decode_hashed(self, actions: Sequence[Action]) -> tuple[str, str]:
        """``(decode(actions), its canonical_hash)`` from one parse."""

    def mutate(self, actions: Sequence[Action], rng: np.random.Generator) -> list[Action]: ...

    def neighbours(self, actions: Sequence[Action]) -> list[list[Action]]:
        """Every architecture one legal change away: each one ``mutate`` can draw."""


def explore(space: SearchSpace, rng: np.random.Generator) -> list[Action]:
    """One trajectory drawn with the space's exploration distribution: what a random step at epsilon 1 takes."""
    state, actions = space.start, []
    while not actions or not space.is_final(actions[-1]):
        options = space.actions(state)
        state = options[rng.choice(len(options), p=space.exploration_probs(state))]
        actions.append(state)
    return actions


def checked_trajectory(space: SearchSpace, actions: Sequence[Action]) -> str:
    """The text of ``actions`` if they are a complete architecture of ``space`` (each action legal after the one
    before, the last final); ValueError otherwise. What an agent checks before it learns from a block."""
    text = space.decode(actions)
    state = space.start
    for action in actions:
        if action not in space.actions(state):
            raise ValueError(f"{action!r} is not a legal action after {state!r} in {text}")
        state = action
    if not actions or not space.is_final(actions[-1]):
        raise ValueError(f"trajectory {text} does not end in a final action")
    return text


class TabularSpace(SearchSpace, Protocol):
    """A space whose every architecture has a known accuracy: nothing is trained, the table is the evaluator."""

    table: Path

    def lookup(self, arch: str) -> float: ...

    def check_complete(self) -> None:
        """Raise ``TableError`` unless the table covers every architecture the space can sample."""
