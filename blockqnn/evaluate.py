"""Evaluating one candidate, the unit of work of a search: parse the architecture, stack the block into the
template's network, count its parameters and FLOPs, train it with the recipe (early stop), score it.

A ``CandidateEvaluator`` is built once per worker from the search's config (the executor sends each worker its
factory when it starts) and keeps the space, the reward and, through ``blockqnn.data``, the dataset on the device.
It seeds each candidate from the run seed and the architecture, and never lets a candidate's failure escape. A
NaN loss, running out of memory, an unbuildable block or any other exception is returned as a ``failed`` Result
with the error text. Only a dataset that cannot be loaded (``DataError``) is raised: it is no candidate's fault,
and every candidate would fail alike.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from blockqnn.candidate import Job, Result, Status, candidate_seed
from blockqnn.codes import Block
from blockqnn.config import config_key
from blockqnn.data import datamodule
from blockqnn.errors import DataError, TemplateMismatch, UserError
from blockqnn.fit import Classifier, RungStop, fit, on_gpu, quiet
from blockqnn.network import network_complexity
from blockqnn.threads import candidate_threads, torch_threads

IDENTITY_BLOCK = Block.parse("(1,4,0,0,0),(2,7,0,0,0)")


class CandidateEvaluator:
    """``evaluator(job) -> Result`` under the composed search config (dataset, template, space, trainer,
    reward, seed). Tabular spaces (NAS-Bench-201) give the table's accuracy without training. ``space``: the
    search's own, so that a table is read once; ``trial``: first train one batch of the smallest block here
    (``try_recipe``), so that a recipe, device or dataset that fails where candidates train stops the search."""

    def __init__(self, cfg: DictConfig, space: Any = None, trial: bool = False) -> None:
        self.cfg = cfg
        self.space = instantiate(cfg.space) if space is None else space
        self.reward = instantiate(cfg.reward)
        if trial:
            self.try_recipe()

    def __call__(self, job: Job) -> Result:
        start = time.perf_counter()
        result = Result(status=Status.FAILED)
        try:
            if self.space.tabular:
                result.accuracy = result.reward = float(self.space.lookup(job.arch))
                result.status = Status.OK
            else:
                self._train(job, result)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a candidate's failure of any kind is recorded, never raised
            result.error = f"{type(e).__name__}: {e}"
        if result.status == Status.FAILED or torch.cuda.is_available():
            _release_memory()
        result.wall_time = time.perf_counter() - start
        return result

    def _train(self, job: Job, result: Result) -> None:
        """Fill ``result`` step by step, so that whatever was measured before a failure is kept."""
        block = self.space.parse(job.arch)
        result.density = block.density()
        stopped = _fit_block(block, self.cfg, job.seed, result, job.cutoffs)
        result.reward = float(self.reward(result.accuracy, result.flops, result.density))
        result.status = Status.STOPPED if stopped else Status.OK

    def try_recipe(self) -> Result:
        """Train one batch of the smallest block with the search's recipe: what fails there would fail every
        candidate, so it stops the search as bad input before its history exists."""
        if self.space.tabular:
            return Result(status=Status.OK)
        try:
            _fit_block(IDENTITY_BLOCK, _one_batch(self.cfg), self.cfg.seed, Result(status=Status.FAILED))
        except DataError:
            raise
        except TemplateMismatch as e:
            raise DataError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - whatever breaks the smallest block would break every candidate
            raise UserError(f"the search's recipe cannot train even the smallest block: {type(e).__name__}: {e}"
                            ) from e
        finally:
            _release_memory()
        return Result(status=Status.OK)


@cache
def _evaluator(key: str) -> CandidateEvaluator:
    return CandidateEvaluator(OmegaConf.create(json.loads(key)))


def evaluator_for(cfg: DictConfig) -> CandidateEvaluator:
    """This process's evaluator for ``cfg`` (by ``config_key``), for calls outside a search (tests, notebooks)."""
    return _evaluator(config_key(cfg))


def evaluate_candidate(arch: str, cfg: DictConfig) -> Result:
    """Train and score one architecture under ``cfg``, outside a search (a search's workers keep their own
    ``CandidateEvaluator``), seeded as a search with ``cfg.seed`` would seed it."""
    evaluator = evaluator_for(cfg)
    block_hash = evaluator.space.canonical_hash(arch)
    return evaluator(Job(arch, block_hash, candidate_seed(cfg.seed, block_hash)))


def _fit_block(block: Block, cfg: DictConfig, seed: int, result: Result,
               cutoffs: Mapping[int, float] | None = None) -> bool:
    """Size and train ``block``'s network into ``result``; whether it was stopped at a rung (``cutoffs``). The
    global RNG is seeded for the candidate and restored afterwards: the caller's random state is not touched."""
    recipe = cfg.trainer
    gpu = on_gpu(recipe)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if gpu else []):
        torch.manual_seed(seed)
        data = datamodule(cfg.dataset, recipe.batch_size, recipe.eval_batch_size, seed)
        data.load()
        template = instantiate(cfg.template)
        result.params, result.flops = network_complexity(
            block, template, data.channels, data.num_classes, data.image_size
        )
        module = Classifier.from_recipe(template.build(block, data.channels, data.num_classes), data.num_classes,
                                        recipe, gpu)
        rungs = RungStop(cutoffs or {})
        try:
            with quiet(), torch_threads(candidate_threads(result.flops)), _gpu_peak(result, gpu):
                fit(module, data, recipe, callbacks=[rungs] if cutoffs else ())
        finally:
            result.epochs = len(module.history)
            result.curve = [epoch.get("val_acc") for epoch in module.history]
    if not module.history or module.history[-1].get("val_acc") is None:
        raise ValueError("no validation accuracy: the recipe validated nothing (dataset.val_size or "
                         "trainer.limit_val_batches is 0)")
    result.accuracy = module.history[-1]["val_acc"]
    return rungs.stopped_at is not None


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


def try_recipe(arch: str, cfg: DictConfig) -> Result:
    """``CandidateEvaluator.try_recipe`` for ``cfg``, outside a search (``arch`` is unused)."""
    return evaluator_for(cfg).try_recipe()


def _one_batch(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the recipe cut to one epoch of one training batch and (unless it validates nothing) one
    validation batch, validated at the epoch's end."""
    recipe = cfg.trainer
    short = {"max_epochs": 1, "limit_train_batches": 1, "check_val_every_n_epoch": 1,
             "limit_val_batches": 0 if recipe.limit_val_batches == 0 else 1}
    if "val_check_interval" in recipe.extra:
        short["extra"] = {"val_check_interval": None}
    return OmegaConf.merge(cfg, {"trainer": short})
