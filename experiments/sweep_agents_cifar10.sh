#!/bin/bash
# Issue #29's real-image sweeps (experiments/README.md, "With the reward model"): experiment=cifar10_small on the
# CIFAR-10 image-folder subset, one multirun per sweep folder, one after another. Each multirun continues where it
# stopped: a finished search is kept, an interrupted one resumes. From the repository root, with the histories of
# experiments/results extracted into runs/ first:
#     for t in experiments/results/*.tar.xz; do tar -xJf $t -C runs; done
#     nohup nice -n 10 bash experiments/sweep_agents_cifar10.sh >> runs/sweep.log 2>&1 &
# DATA: the image-folder tree (default ../shared/data/cifar10-subset); PY: the Python to run (default .venv's).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/cifar10-subset}
search() {
    $PY -m blockqnn.search -m experiment=cifar10_small dataset=imagefolder dataset.source.root="$DATA" \
        dataset.source.train_size=null logger=none "$@"
}
search agent=qlearning seed=0,1,2,3,4,5,6,7 hydra.sweep.dir=runs/agents-cifar10-qexploit
search agent=random,evolution seed=5,6,7 hydra.sweep.dir=runs/agents-cifar10-more
search agent=local seed=0,1,2,3,4,5,6,7 hydra.sweep.dir=runs/agents-cifar10-local
search agent=qlearning agent.model.proposals=1 agent.model.exploit=false agent.model.planning=0 seed=5,6,7 \
    hydra.sweep.dir=runs/agents-cifar10-qfree
search agent=guided_evolution seed=0,1,2,3,4,5,6,7 hydra.sweep.dir=runs/agents-cifar10-guided
