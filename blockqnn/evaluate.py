"""Evaluating one candidate, the unit of work of a search: parse the architecture, stack the block into the
template's network, count its parameters and FLOPs, train it with the recipe (early stop), score it.

``build_evaluator(cfg, space, budget)`` is the one place an evaluator is made from the search's config: the data
module (loaded once, kept on the device), the template, the recipe (``cfg.trainer``), the reward, the space and the
thread budget its executor grants are built there and handed to ``CandidateEvaluator``, which keeps them for every
candidate; per candidate only the block, its seed and its rung cut-offs change (the ``Job``). Each worker builds
its evaluator once, through the factory ``candidate_factory`` returns. A table space (NAS-Bench-201) is looked up,
never trained (``TableEvaluator``).

An evaluator never lets a candidate's failure escape: a NaN loss, running out of memory, an unbuildable block or
any other exception is returned as a ``failed`` Result with the error text. Only a dataset that cannot be loaded
(``DataError``) is raised: it is no candidate's fault, and every candidate would fail alike.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from blockqnn.candidate import Job, Result, Status, candidate_seed
from blockqnn.codes import Block
from blockqnn.data import DeviceData, StreamedData, datamodule
from blockqnn.errors import DataError, TemplateMismatch, UserError
from blockqnn.fit import Classifier, RungStop, fit, on_gpu, quiet
from blockqnn.network import Template, network_complexity
from blockqnn.threads import NO_BUDGET, ThreadBudget, torch_threads

IDENTITY_BLOCK = Block.parse("(1,4,0,0,0),(2,7,0,0,0)")
Reward = Callable[[float, float, float], float]  # (accuracy, flops, density) -> reward, blockqnn.reward


class _Scoring:
    """``evaluator(job) -> Result``: times the candidate and turns any failure but a ``DataError`` into a failed
    Result; ``_score`` fills the result step by step, so that whatever was measured before a failure is kept."""

    def __call__(self, job: Job) -> Result:
        start = time.perf_counter()
        result = Result(status=Status.FAILED)
        try:
            self._score(job, result)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a candidate's failure of any kind is recorded, never raised
            result.error = f"{type(e).__name__}: {e}"
        if result.status == Status.FAILED or torch.cuda.is_available():
            _release_memory()
        result.wall_time = time.perf_counter() - start
        return result

    def _score(self, job: Job, result: Result) -> None:
        raise NotImplementedError


class TableEvaluator(_Scoring):
    """A tabular space's candidates: the table's accuracy, no training."""

    def __init__(self, space: Any) -> None:
        self.space = space

    def _score(self, job: Job, result: Result) -> None:
        result.accuracy = result.reward = float(self.space.lookup(job.arch))
        result.status = Status.OK


class CandidateEvaluator(_Scoring):
    """Trains and scores candidates of ``space`` on ``data`` (a data module, loaded), each block stacked by
    ``template``, trained with ``recipe`` (``cfg.trainer``) on at most the threads ``threads`` grants, scored by
    ``reward``; built by ``build_evaluator``."""

    def __init__(self, data: DeviceData | StreamedData, template: Template, recipe: DictConfig, reward: Reward,
                 space: Any, threads: ThreadBudget) -> None:
        self.data, self.template, self.recipe, self.reward = data, template, recipe, reward
        self.space, self.threads = space, threads
        self.gpu = on_gpu(recipe)

    def _score(self, job: Job, result: Result) -> None:
        block = self.space.parse(job.arch)
        result.density = block.density()
        stopped = self._fit(block, self.recipe, job.seed, result, job.cutoffs)
        result.reward = float(self.reward(result.accuracy, result.flops, result.density))
        result.status = Status.STOPPED if stopped else Status.OK

    def try_recipe(self, seed: int) -> None:
        """Train one batch of the smallest block with the recipe: what fails there would fail every candidate, so
        it stops the search as bad input before its history exists."""
        try:
            self._fit(IDENTITY_BLOCK, one_batch(self.recipe), seed, Result(status=Status.FAILED))
        except DataError:
            raise
        except TemplateMismatch as e:
            raise DataError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - whatever breaks the smallest block would break every candidate
            raise UserError(f"the search's recipe cannot train even the smallest block: {type(e).__name__}: {e}"
                            ) from e
        finally:
            _release_memory()

    def _fit(self, block: Block, recipe: DictConfig, seed: int, result: Result,
             cutoffs: Mapping[int, float] | None = None) -> bool:
        """Size and train ``block``'s network into ``result``; whether it was stopped at a rung (``cutoffs``). The
        global RNG is seeded for the candidate and restored afterwards: the caller's random state is not touched;
        the data shuffles by the same seed."""
        data = self.data
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if self.gpu else []):
            torch.manual_seed(seed)
            data.seed = seed
            result.params, result.flops = network_complexity(
                block, self.template, data.channels, data.num_classes, data.image_size
            )
            module = Classifier.from_recipe(self.template.build(block, data.channels, data.num_classes),
                                            data.num_classes, recipe, self.gpu)
            rungs = RungStop(cutoffs or {})
            try:
                with quiet(), torch_threads(self.threads.for_candidate(result.flops)), _gpu_peak(result, self.gpu):
                    fit(module, data, recipe, callbacks=[rungs] if cutoffs else ())
            finally:
                data.trainer = None  # the finished candidate's trainer (and with it its network) is not kept
                result.epochs = len(module.history)
                result.curve = [epoch.get("val_acc") for epoch in module.history]
        if not module.history or module.history[-1].get("val_acc") is None:
            raise ValueError("no validation accuracy: the recipe validated nothing (dataset.val_size or "
                             "trainer.limit_val_batches is 0)")
        result.accuracy = module.history[-1]["val_acc"]
        return rungs.stopped_at is not None


def build_evaluator(cfg: DictConfig, space: Any = None, budget: ThreadBudget = NO_BUDGET,
                    trial: bool = False) -> CandidateEvaluator | TableEvaluator:
    """The evaluator of the composed search config ``cfg`` (dataset, template, trainer, reward, seed), every part
    built here, once: ``space`` is the search's own (a table read once; None: built from ``cfg.space``),
    ``budget`` the threads its executor grants (default: torch's setting is left alone). ``trial``: first train
    one batch of the smallest block (``try_recipe``), so that a recipe, device or dataset that fails where
    candidates train stops the search."""
    space = instantiate(cfg.space) if space is None else space
    if space.tabular:
        return TableEvaluator(space)
    recipe = cfg.trainer
    data = datamodule(cfg.dataset, recipe.batch_size, recipe.eval_batch_size, cfg.seed)
    with torch_threads(budget.threads):  # the worker's budget covers loading: a CPU worker forked from a process
        data.load()                      # that ran torch on more threads hangs in its first multi-threaded op
    evaluator = CandidateEvaluator(data, instantiate(cfg.template), recipe, instantiate(cfg.reward), space, budget)
    if trial:
        evaluator.try_recipe(cfg.seed)
    return evaluator


def candidate_factory(cfg: DictConfig, space: Any) -> Callable[[ThreadBudget], CandidateEvaluator | TableEvaluator]:
    """The search's evaluator factory: picklable, each worker calls it once with its thread budget
    (``build_evaluator`` with the recipe's trial)."""
    return partial(build_evaluator, cfg, space, trial=True)


def evaluate_candidate(arch: str, cfg: DictConfig) -> Result:
    """Train and score one architecture under ``cfg``, outside a search (an evaluator built for this one call; a
    search's workers keep theirs), seeded as a search with ``cfg.seed`` would seed it."""
    evaluator = build_evaluator(cfg)
    try:
        block_hash = evaluator.space.canonical_hash(arch)
    except Exception:  # noqa: BLE001 - a block the space refuses fails in the evaluator, as a failed Result
        block_hash = arch
    return evaluator(Job(arch, block_hash, candidate_seed(cfg.seed, block_hash)))


def try_recipe(arch: str, cfg: DictConfig) -> Result:
    """``CandidateEvaluator.try_recipe`` for ``cfg``, outside a search (``arch`` is unused): an ``ok`` Result when
    the recipe trains, else the error it raises."""
    build_evaluator(cfg, trial=True)
    return Result(status=Status.OK)


@contextlib.contextmanager
def _gpu_peak(result: Result, gpu: bool) -> Iterator[None]:
    """On a GPU, the most memory the block's training allocated into ``result.gpu_memory`` (MiB): what a candidate
    needs, in the history, to see how many pack onto one GPU (``executor.workers_per_gpu``). The memory its worker
    already held (the data kept on the device) is counted in: the figure is what the worker needed at the most."""
    if not gpu:
        yield
        return
    torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        result.gpu_memory = torch.cuda.max_memory_allocated() / 2**20


def _release_memory() -> None:
    """Drop the finished candidate's tensors before the next one starts: Lightning's trainer and module refer to
    each other, so without a collection they would wait for Python's cyclic collector, holding device memory
    (and after an OOM, the memory that the next candidate needs)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def one_batch(recipe: DictConfig) -> DictConfig:
    """``recipe`` cut to one epoch of one training batch and (unless it validates nothing) one validation batch,
    validated at the epoch's end."""
    short = {"max_epochs": 1, "limit_train_batches": 1, "check_val_every_n_epoch": 1,
             "limit_val_batches": 0 if recipe.limit_val_batches == 0 else 1}
    if "val_check_interval" in recipe.extra:
        short["extra"] = {"val_check_interval": None}
    return OmegaConf.merge(recipe, short)
