"""Speed of the agent side of a paper-size search: is Q-learning cheap next to training?

Runs conf/agent/qlearning.yaml on conf/space/nsc.yaml for the whole schedule (paper: 178 iterations of 64
blocks = 11,392 blocks, replay 128 per iteration) with a cheap synthetic reward instead of training, pinned to
one CPU core, and prints wall time, blocks per second, and the size and time of one agent checkpoint.
Target: under 30 s.

    python experiments/bench_agent.py                       # the paper's schedule
    python experiments/bench_agent.py agent.alpha=0.1       # any Hydra override of the agent or space
"""

from __future__ import annotations

import argparse
import json
import os
import time

from hydra.utils import instantiate

from blockqnn.codes import Layer, LayerType
from blockqnn.config import compose


def synthetic_reward(layers: list[Layer]) -> float:
    """Cheap and structured: deeper blocks, 3x3 convolutions and element-wise adds score higher."""
    convs = sum(layer.type == LayerType.CONV and layer.kernel == 3 for layer in layers)
    adds = sum(layer.type == LayerType.ADD for layer in layers)
    return min(1.0, 0.3 + 0.03 * len(layers) + 0.05 * convs + 0.04 * adds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. agent.replay_size=100")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cfg = compose("search", ["agent=qlearning", "space=nsc", *args.overrides])
    agent = instantiate(cfg.agent, space=instantiate(cfg.space), seed=args.seed)

    seen: set[str] = set()
    mean_rewards = []
    sampling = updating = 0.0
    start = time.perf_counter()
    while not agent.done:
        t0 = time.perf_counter()
        blocks = agent.sample()
        t1 = time.perf_counter()
        rewards = [synthetic_reward(block) for block in blocks]
        seen.update(str(block) for block in map(tuple, blocks))
        mean_rewards.append(sum(rewards) / len(rewards))
        t2 = time.perf_counter()
        agent.update(blocks, rewards)
        sampling, updating = sampling + t1 - t0, updating + time.perf_counter() - t2
    wall = time.perf_counter() - start

    t0 = time.perf_counter()
    text = json.dumps(agent.state_dict())
    t1 = time.perf_counter()
    instantiate(cfg.agent, space=instantiate(cfg.space), seed=args.seed).load_state_dict(json.loads(text))
    t2 = time.perf_counter()

    blocks_total = agent.num_iterations * agent.batch_size
    print(f"schedule {cfg.agent.epsilon_schedule} x{cfg.agent.schedule_scale}: {agent.num_iterations} iterations of "
          f"{agent.batch_size} = {blocks_total} blocks, replay {agent.replay_size}, max_index {cfg.space.max_index}")
    print(f"wall {wall:.2f} s ({blocks_total / wall:.0f} blocks/s; sampling {sampling:.2f} s, updates {updating:.2f} s)"
          f", target < 30 s: {'met' if wall < 30 else 'MISSED'} ({30 / wall:.1f}x margin)")
    print(f"mean synthetic reward: first iteration {mean_rewards[0]:.3f}, last {mean_rewards[-1]:.3f}")
    print(f"distinct blocks {len(seen)} of {blocks_total}; Q states {len(agent.state_dict()['q'])}")
    print(f"checkpoint {len(text) / 1e6:.2f} MB JSON; save {t1 - t0:.2f} s, restore {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
