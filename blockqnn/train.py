"""``python -m blockqnn.train block=RUN_DIR:1``: train a found block properly, test it, export it as one file.

The search ranks blocks on a small template with an early-stopped schedule; this is the other half of the paper:
the chosen block stacked into a bigger template (``template.N`` = N, ``template.F`` = F), trained with
the full recipe (``trainer=final``), on CIFAR or, by swapping groups, ImageNet. Lightning does the rest: checkpoints
in ``RUN_DIR/checkpoints`` (a re-run into the same folder resumes from ``last.ckpt``), DDP and bf16 from the
trainer config, W&B through the logger group. The folder ends with ``model.pt`` (``blockqnn.load``) and
``result.json`` (test and validation accuracy, size, where the block came from).
"""

from __future__ import annotations

import json
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
from blockqnn.cli import UserError, hydra_app
from blockqnn.config import changed_leaves
from blockqnn.data import channel_stats, datamodule
from blockqnn.network import network_complexity
from blockqnn.nsc import Block
from blockqnn.store import Store
from blockqnn.tracking import WandbTracker, wandb_mode
from blockqnn.training import Classifier, accuracy_on_test_set, build_trainer, on_gpu, quiet, release_process_group

RANKED = re.compile(r"(?P<run>[^()\[\]]+):(?P<rank>-?\d+)")
CONFIG_FILE, RESULT_FILE, CHECKPOINTS = "config.yaml", "result.json", "checkpoints"


# ---- which block --------------------------------------------------------------------------------------------------
def resolve_block(spec: Any) -> tuple[Block, dict[str, Any]]:
    """The block a ``block=`` value names and where it came from.

    ``RUN_DIR:k`` is the k-th best trained block of a search (as ``blockqnn.report`` ranks them); a string is an
    NSC code; a list of 5-integer lists is the same code in Hydra's list syntax.
    """
    if spec is None:
        raise UserError("no block given: block=RUN_DIR:k (k-th best of a search) or block='\"<NSC code>\"'")
    if isinstance(spec, ListConfig | list):
        return Block.of([tuple(row) for row in spec], None), {}
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


# ---- the run folder ---------------------------------------------------------------------------------------------
def train_dir_or_resume(resume: str | None, default: str) -> str:
    """Hydra's run folder: the train folder to resume (checked before Hydra writes into it), else a new one."""
    if resume is None:
        return default
    if not (Path(resume) / CONFIG_FILE).is_file():
        raise UserError(f"resume={resume}: not a train folder (no {CONFIG_FILE} in it)")
    return str(resume)


OmegaConf.register_new_resolver("blockqnn.train_dir", train_dir_or_resume, replace=True)


def pin_config(cfg: DictConfig, block: Block, folder: Path) -> DictConfig:
    """The config to train with: a resumed folder must train the same network on the same data, and a missing
    ``block`` on resume is taken from the folder. Writes nothing (see ``save_config``)."""
    saved_path = folder / CONFIG_FILE
    cfg = OmegaConf.merge(cfg, {"block": str(block)}) if block is not None else cfg
    if saved_path.is_file():
        saved = OmegaConf.load(saved_path)
        if block is None:
            cfg = OmegaConf.merge(cfg, {"block": saved.block})
        for key in ("block", "template", "dataset"):
            differing = changed_leaves(saved, cfg, [key])
            if differing:
                raise UserError(f"{folder} was trained with another {key} ({', '.join(differing[:3])}); "
                                f"train into a new folder or repeat the folder's settings")
    return cfg


def save_config(cfg: DictConfig, folder: Path) -> None:
    """Record what this folder trains, once the data has loaded: a folder with a config is a resumable one."""
    saved_path = folder / CONFIG_FILE
    if not saved_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create({k: _resolved(cfg, k) for k in cfg if k != "hydra"}), saved_path)


def _resolved(cfg: DictConfig, key: str) -> Any:
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


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


# ---- training -----------------------------------------------------------------------------------------------------
def train(cfg: DictConfig, folder: Path) -> dict[str, Any]:
    """Full training of ``cfg.block`` into ``folder``; returns what ``result.json`` records."""
    resuming_without_block = cfg.block is None and (folder / CONFIG_FILE).is_file()
    block, source = (None, {}) if resuming_without_block else resolve_block(cfg.block)
    cfg = pin_config(cfg, block, folder)
    block = block or Block.parse(cfg.block, None)
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
    last = folder / CHECKPOINTS / "last.ckpt"
    resume_from = str(last) if last.is_file() else None
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
    if trainer.is_global_zero:
        export.save(folder / cfg.export, block, cfg.template, dataset_settings(cfg.dataset, data),
                    module.net.state_dict())
        (folder / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        print(f"test accuracy {test_acc:.4f} (validation {val['val_acc']:.4f}) after {result['epochs']} epochs; "
              f"model saved to {folder / cfg.export}")
    if trainer.is_global_zero and isinstance(logger, WandbLogger):  # other ranks hold a dummy experiment
        logger.experiment.summary.update({k: v for k, v in result.items() if v is not None})
        logger.experiment.finish()
    release_process_group()
    return result


def dataset_settings(dataset_cfg: DictConfig, data) -> dict[str, Any]:
    """The dataset config as trained on, with what the data filled in (classes, measured normalisation)."""
    settings = OmegaConf.to_container(dataset_cfg, resolve=True)
    settings["num_classes"] = data.num_classes
    if settings.get("mean") is None or settings.get("std") is None:
        settings["mean"], settings["std"] = map(list, channel_stats(data.source_key, data.val_size, data.split_seed))
    return settings


@hydra_app("train")
def main(cfg: DictConfig) -> None:
    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
