"""Checking a saved agent state before an agent restores it from a run's history.

An agent's state is plain JSON data (``state_dict``) stored in the history; a damaged one, or one saved by an
agent with another space or schedule, must be refused in one line (``AgentStateError``) before anything of the
agent changes, so that a refused resume leaves the run as it was. The agents keep only the idea; the checks are
here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from blockqnn.errors import AgentStateError


def check_state(state: Any, fmt: int, types: Mapping[str, type], num_iterations: int) -> None:
    """Refuse a state of the wrong shape (damaged, or not an agent's), or of another schedule length."""
    if not isinstance(state, Mapping):
        raise AgentStateError(f"saved agent state is a {type(state).__name__}, not a mapping")
    if state.get("format") != fmt:
        raise AgentStateError(f"agent state format {state.get('format')!r} is not {fmt}")
    wrong = [f"{key} ({kind.__name__})" for key, kind in types.items()
             if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)]
    if wrong:
        raise AgentStateError(f"saved agent state lacks, or has the wrong type of: {', '.join(wrong)}")
    if state["num_iterations"] != num_iterations:
        raise AgentStateError(
            f"agent state was saved with {state['num_iterations']} iterations, this schedule has "
            f"{num_iterations}: resume with the run's own agent config"
        )
    if not 0 <= state["iteration"] <= num_iterations:
        raise AgentStateError(f"saved agent state is at iteration {state['iteration']} of {num_iterations}")


def checked_rng_state(saved: dict, rng: np.random.Generator) -> dict:
    """``saved`` as accepted by a generator like ``rng`` (tried on a new one, so a refused state changes nothing)."""
    bits = type(rng.bit_generator)()
    try:
        bits.state = saved
    except (KeyError, TypeError, ValueError) as e:
        raise AgentStateError(f"saved agent state has an unusable random generator state ({e!r:.80})") from None
    return bits.state


def memory_entries(memory: list, kind: str = "memory entry") -> Iterator[tuple[str, Any]]:
    """The ``[block, reward]`` entries of a saved replay memory, or of another list of them (``kind`` names an
    entry: a population member); the reward is checked by the agent."""
    for item in memory:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise AgentStateError(f"saved agent state has a {kind} {item!r:.80} that is not [block, reward]")
        yield item[0], item[1]


def q_entries(q: dict, known_states: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, float]]]:
    """``(state, {action: value})`` of saved Q-values, each at a state the remembered blocks visit
    (``known_states``, keyed by ``repr``) and holding finite numbers."""
    for key, values in q.items():
        if key not in known_states:
            raise AgentStateError(f"saved agent state has Q-values at state {key}, which no remembered block visits")
        if not isinstance(values, dict) or not all(map(_finite, values.values())):
            raise AgentStateError(f"saved agent state has Q-values at state {key} that are not numbers by action")
        yield key, values


def model_entries(saved: Any, remembered: int) -> tuple[int, list[str]]:
    """A saved reward model's record (``{"fitted_on": n, "planned": [block, ...]}``, absent when the agent had none):
    how many remembered blocks its last fit saw, and the simulated blocks whose states the Q-values need."""
    if saved is None:
        return 0, []
    fitted_on, planned = (saved.get("fitted_on"), saved.get("planned")) if isinstance(saved, Mapping) else (None, None)
    if not (isinstance(fitted_on, int) and not isinstance(fitted_on, bool) and 0 <= fitted_on <= remembered
            and isinstance(planned, list) and all(isinstance(text, str) for text in planned)):
        raise AgentStateError(f"saved agent state has a reward model record {saved!r:.80} that is not "
                              f"{{fitted_on: 0..{remembered}, planned: [block, ...]}}")
    return fitted_on, planned


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
