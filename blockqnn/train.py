"""``python -m blockqnn.train block=RUN_DIR:1``: train a found block properly, test it, export it as one file.

The search ranks blocks on a small template with an early-stopped schedule; this is the other half of the paper:
the chosen block stacked into a bigger template (``template.N`` = N, ``template.F`` = F), trained with
the full recipe (``trainer=final``), on CIFAR or, by swapping groups, ImageNet. Lightning does the rest: checkpoints
in ``RUN_DIR/checkpoints`` (``resume=RUN_DIR`` alone continues from ``last.ckpt`` with the folder's settings), DDP
and bf16 from the trainer config, W&B through the logger group. The folder ends with ``model.pt``
(``blockqnn.load``) and ``result.json`` (test and validation accuracy, size, where the block came from).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from blockqnn import export
from blockqnn.cli import hydra_app
from blockqnn.codes import Block
from blockqnn.data import channel_stats, datamodule
from blockqnn.errors import UserError
from blockqnn.fit import Classifier, accuracy_on_test_set, build_trainer, on_gpu, quiet, release_process_group
from blockqnn.network import network_complexity
from blockqnn.resume import (
    CHECKPOINTS,
    LAST,
    absolute_locations,
    adopt_folder_config,
    adopt_stored,
    check_epochs_left,
    check_same_network,
    check_train_folder,
    is_train_folder,
    override_keys,
    save_config,
)
from blockqnn.store import Store
from blockqnn.tracking import WandbTracker, wandb_mode

RANKED = re.compile(r"(?P<run>[^()\[\]]+):(?P<rank>-?\d+)")
RESULT_FILE = "result.json"
# What a block taken from a search (RUN_DIR:k) trains on unless the command line names it: the search's own.
SEARCHED = ("dataset", "template")

log = logging.getLogger(__name__)


# ---- which block --------------------------------------------------------------------------------------------------
def resolve_block(spec: Any) -> tuple[Block, dict[str, Any]]:
    """The block a ``block=`` value names and where it came from.

    ``RUN_DIR:k`` is the k-th best trained block of a search (as ``blockqnn.report`` ranks them); a string is an
    NSC code; a list of 5-integer lists is the same code in Hydra's list syntax.
    """
    if spec is None:
        raise UserError("no block given: block=RUN_DIR:k (k-th best of a search) or block='\"<NSC code>\"'")
    if isinstance(spec, ListConfig | list):
        return Block.of(spec, None), {}
    text = str(spec).strip()
    ranked = RANKED.fullmatch(text)
    if ranked is None:
        return Block.parse(text, None), {}
    run, rank = ranked["run"], int(ranked["rank"])
    if rank < 1:
        raise UserError(f"block={text}: ranks start at 1")
    with Store.open(run, readonly=True) as store:
        best = store.best(rank)
    if len(best) < rank:
        raise UserError(f"block={text}: rank {rank} is out of range, {run} has {len(best)} trained blocks")
    row = best[rank - 1]
    source = {"search_run": str(Path(run).resolve()), "rank": rank, "search_reward": row["reward"],
              "search_accuracy": row["accuracy"]}
    return Block.parse(row["arch"], None), source


def tracking_logger(cfg: DictConfig, folder: Path) -> Logger | bool:
    """Lightning's W&B logger for ``logger=wandb`` (same project, mode rules and folder layout as the search;
    a resumed folder continues its W&B run), nothing for ``logger=none``."""
    tracker = instantiate(cfg.logger)
    if not isinstance(tracker, WandbTracker):
        return False
    id_file = folder / "wandb_run_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    logger = WandbLogger(
        project=tracker.project, entity=tracker.entity, group=tracker.group, tags=tracker.tags, name=folder.name,
        save_dir=str(folder), id=run_id, resume="allow" if run_id else None, mode=wandb_mode(tracker.mode),
        job_type="train", config=OmegaConf.to_container(cfg, resolve=True),
    )
    if rank_zero_only.rank == 0:  # other DDP ranks hold a stand-in experiment
        id_file.write_text(logger.experiment.id)
    return logger


def as_searched(cfg: DictConfig, run: str, overridden: set[str] | None) -> tuple[DictConfig, list[str]]:
    """``cfg`` with the dataset and template (``N``, ``F`` included) of the search run a block came from, as far as
    the command line leaves them out (``template.N=4`` keeps the searched template, four blocks per stage), and the
    sections taken. ``overridden`` None (an API call, no command line) takes nothing."""
    if overridden is None:
        return cfg, []
    with Store.open(run, readonly=True) as store:
        stored = store.config()
    taken = [section for section in SEARCHED if section not in overridden and section in stored]
    return adopt_stored(stored, cfg, taken, overridden), taken


def describe_plan(cfg: DictConfig, source: dict[str, Any], taken: list[str]) -> str:
    """One line saying what is trained on what, and which settings came from the search run."""
    template = cfg.template
    shape = f"template {template.get('stem', '?')} with {template.get('stages')} stages, N={template.get('N')}, " \
            f"F={template.get('F')}"
    epochs = cfg.trainer.max_epochs
    line = f"training {cfg.block} on dataset {cfg.dataset.get('name', '?')}, {shape}, for {epochs} " \
           f"epoch{'s' if epochs != 1 else ''}"
    if source:
        line += f"; block ranked {source['rank']} in {source['search_run']}"
    if taken:
        named = " and ".join(taken)
        line += f"; {named} as searched there (name {' or '.join(f'{t}=' for t in taken)} to choose others)"
    return line


# ---- training -----------------------------------------------------------------------------------------------------
def plan_run(cfg: DictConfig, folder: Path, overridden: set[str] | None
             ) -> tuple[DictConfig, Block, dict[str, Any], str | None]:
    """The config (block as its NSC code), the block, where it came from, and the checkpoint to resume from: a
    resume takes what the command line leaves out from the folder and must agree with it; a block from a search
    trains on the search's dataset and template unless the command line names others. Writes nothing."""
    saved = check_train_folder(folder) if is_train_folder(folder) else None
    if saved is not None:
        cfg = adopt_folder_config(saved, cfg, overridden)
    block, source = resolve_block(cfg.block)
    taken = []
    if source and saved is None:
        cfg, taken = as_searched(cfg, source["search_run"], overridden)
    cfg = absolute_locations(OmegaConf.merge(cfg, {"block": str(block)}))
    log.info(describe_plan(cfg, source, taken))
    if saved is not None:
        check_same_network(saved, cfg, folder)
    last = folder / CHECKPOINTS / LAST
    if not last.is_file():
        return cfg, block, source, None
    check_epochs_left(last, cfg.trainer.max_epochs)
    log.info("continuing from %s", last)
    return cfg, block, source, str(last)


def train(cfg: DictConfig, folder: Path, overridden: set[str] | None = None) -> dict[str, Any]:
    """Full training of ``cfg.block`` into ``folder``, or its continuation if the folder holds a training; returns
    what ``result.json`` records. ``overridden``: see ``adopt_folder_config``."""
    cfg, block, source, resume_from = plan_run(cfg, folder, overridden)
    recipe = cfg.trainer
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = datamodule(cfg.dataset, recipe.batch_size, recipe.eval_batch_size, cfg.seed)
    data.load()
    save_config(cfg, folder)
    template = instantiate(cfg.template)
    params, flops = network_complexity(block, template, data.channels, data.num_classes, data.image_size)
    module = Classifier.from_recipe(template.build(block, data.channels, data.num_classes), data.num_classes,
                                    recipe, on_gpu(recipe))
    checkpoints = ModelCheckpoint(dirpath=folder / CHECKPOINTS, save_last=True, save_top_k=0,
                                  every_n_epochs=cfg.checkpoint.every_n_epochs)
    logger = tracking_logger(cfg, folder)
    with quiet():
        trainer = build_trainer(recipe, logger=logger, callbacks=[checkpoints], enable_checkpointing=True,
                                default_root_dir=str(folder))
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
        (val,) = trainer.validate(module, datamodule=data, verbose=False)
        test_acc = accuracy_on_test_set(trainer, module, data)
    result = {
        "nsc": str(block), "test_acc": test_acc, "val_acc": val["val_acc"], "epochs": trainer.current_epoch,
        "params": params, "flops": flops, "resumed_from": resume_from,
        **source,
    }
    try:
        if trainer.is_global_zero:
            publish(cfg, folder, block, module, data, result, logger)
    finally:
        release_process_group()  # every rank, also when rank 0 failed: the others would wait for it
    return result


def publish(cfg: DictConfig, folder: Path, block: Block, module: Classifier, data, result: dict[str, Any],
            logger: Logger | bool) -> None:
    """Rank 0's part: the exported model, ``result.json``, the printed line and the W&B summary."""
    export.save(folder / cfg.export, block, cfg.template, dataset_settings(cfg.dataset, data), module.net.state_dict())
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    log.info(f"test accuracy {result['test_acc']:.4f} (validation {result['val_acc']:.4f}) after {result['epochs']} "
             f"epochs; model saved to {folder / cfg.export}")
    if isinstance(logger, WandbLogger):
        logger.experiment.summary.update({k: v for k, v in result.items() if v is not None})
        logger.experiment.finish()


def dataset_settings(dataset_cfg: DictConfig, data) -> dict[str, Any]:
    """The dataset config as trained on, with what the data filled in (classes, measured normalisation)."""
    settings = OmegaConf.to_container(dataset_cfg, resolve=True)
    settings["num_classes"] = data.num_classes
    settings["classes"] = list(data.classes) if data.classes else None
    if settings.get("mean") is None or settings.get("std") is None:
        settings["mean"], settings["std"] = map(list, channel_stats(data.source_key, data.val_size, data.split_seed))
    return settings


@hydra_app("train")
def main(cfg: DictConfig) -> None:
    hydra = HydraConfig.get()
    train(cfg, Path(hydra.runtime.output_dir), override_keys(hydra.overrides.task))


if __name__ == "__main__":
    main()
