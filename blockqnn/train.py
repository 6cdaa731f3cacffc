"""``python -m blockqnn.train block=RUN_DIR:1``: train a found block properly, test it, export it as one file.

The search ranks blocks on a small template with an early-stopped schedule; this is the other half of the paper:
the chosen block stacked into a bigger template (``template.N`` = N, ``template.F`` = F), trained with
the full recipe (``trainer=final``), on CIFAR or, by swapping groups, ImageNet. Lightning does the rest: checkpoints
in ``RUN_DIR/checkpoints`` (``resume=RUN_DIR`` alone continues from ``last.ckpt`` with the folder's settings;
``best.ckpt`` holds the best validated epoch), DDP and bf16 from the trainer config, the progress bar on a terminal,
W&B through the logger group; every epoch is a row of ``metrics.csv`` whatever the logger. The folder ends with
``model.pt`` (``blockqnn.load``), the same model as ``model.onnx`` and ``model.pt2`` (a ``torch.export`` program),
and ``result.json`` (test and validation accuracy, size, where the block came from).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from blockqnn import export
from blockqnn.cli import hydra_app
from blockqnn.codes import Block
from blockqnn.data import datamodule
from blockqnn.errors import UserError
from blockqnn.executors.lifetime import die_with
from blockqnn.fit import (
    Classifier,
    EpochRecord,
    accuracy_on_test_set,
    build_trainer,
    on_gpu,
    quiet,
    release_process_group,
)
from blockqnn.lock import writer
from blockqnn.network import network_complexity
from blockqnn.resume import (
    ADOPTED,
    CHECKPOINTS,
    LAST,
    absolute_locations,
    check_epochs_left,
    check_same_network,
    check_train_folder,
    command_line_keys,
    is_train_folder,
    merge_stored,
    save_config,
    taken_sections,
)
from blockqnn.store import Store
from blockqnn.tracking import WandbTracker, log_model_artifact, online_or_offline, record_lineage, wandb_mode

RANKED = re.compile(r"(?P<run>[^()\[\]]+):(?P<rank>-?\d+)")
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"  # one row per epoch (blockqnn.fit.EpochRecord)
BEST = "best"  # checkpoints/best.ckpt: the epoch with the best validation accuracy
EXAMPLE_BATCH = 4  # images an export is checked on
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

    def start(mode: str) -> WandbLogger:
        import wandb

        logger = WandbLogger(
            project=tracker.project, entity=tracker.entity, group=tracker.group, tags=tracker.tags,
            name=folder.name, save_dir=str(folder), id=run_id, resume="allow" if run_id else None, mode=mode,
            job_type="train", config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(init_timeout=tracker.init_timeout),
        )
        if rank_zero_only.rank == 0:  # other DDP ranks hold a stand-in experiment
            id_file.write_text(logger.experiment.id)
        return logger

    return online_or_offline(start, wandb_mode(tracker.mode), folder)


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
def plan_run(cfg: DictConfig, folder: Path, command_line: set[str] | None
             ) -> tuple[DictConfig, Block, dict[str, Any], str | None]:
    """The config (block as its NSC code), the block, where it came from, and the checkpoint to resume from: a
    resume takes what the command line leaves out from the folder and must agree with it; a block from a search
    trains on the search's dataset and template (``N``, ``F`` included) unless the command line names others
    (``template.N=4`` keeps the searched template, four blocks per stage). ``command_line``: the keys the command
    line set (``blockqnn.resume.command_line_keys``); None (an API call) trains ``cfg`` as given, taking only a
    missing block from the folder. Writes nothing."""
    saved = check_train_folder(folder) if is_train_folder(folder) else None
    if saved is not None:
        cfg = merge_stored(saved, cfg, ADOPTED, command_line)
    block, source = resolve_block(cfg.block)
    taken = []
    if source and saved is None and command_line is not None:
        with Store.open(source["search_run"], readonly=True) as store:
            searched = store.config()
        taken = taken_sections(searched, cfg, SEARCHED, command_line)
        cfg = merge_stored(searched, cfg, taken, command_line)
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


def train(cfg: DictConfig, folder: Path, command_line: set[str] | None = None) -> dict[str, Any]:
    """Full training of ``cfg.block`` into ``folder``, or its continuation if the folder holds a training; returns
    what ``result.json`` records. ``command_line``: see ``plan_run``."""
    with writer(folder, foreign=cfg.get("resume") is not None and not is_train_folder(folder)):
        return _train(cfg, folder, command_line)


def _train(cfg: DictConfig, folder: Path, command_line: set[str] | None) -> dict[str, Any]:
    cfg, block, source, resume_from = plan_run(cfg, folder, command_line)
    recipe = cfg.trainer
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = datamodule(cfg.dataset, recipe.batch_size, recipe.eval_batch_size, cfg.seed)
    data.load()
    save_config(cfg, folder)
    template = instantiate(cfg.template)
    params, flops = network_complexity(block, template, data.channels, data.num_classes, data.image_size)
    module = Classifier.from_recipe(template.build(block, data.channels, data.num_classes), data.num_classes,
                                    recipe, on_gpu(recipe))
    callbacks, best = run_callbacks(cfg, folder)
    tracker = tracking_logger(cfg, folder)
    mode = progress_mode(cfg.progress.mode)
    record = EpochRecord(folder / METRICS_FILE, recipe.max_epochs, log_lines=mode == "log")
    loggers = [record, tracker] if tracker else [record]
    with quiet():
        trainer = build_trainer(recipe, logger=loggers, callbacks=callbacks, enable_checkpointing=True,
                                default_root_dir=str(folder), progress_bar=mode == "bar")
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
        (val,) = trainer.validate(module, datamodule=data, verbose=False)
        test_acc = accuracy_on_test_set(trainer, module, data)
    result = {
        "nsc": str(block), "test_acc": test_acc, "val_acc": val["val_acc"], "epochs": trainer.current_epoch,
        "params": params, "flops": flops, "resumed_from": resume_from, **best_of(best), **source,
    }
    try:
        if trainer.is_global_zero:
            publish(cfg, folder, block, module, data, result, tracker)
    finally:
        release_process_group()  # every rank, also when rank 0 failed: the others would wait for it
    return result


def progress_mode(mode: str) -> str:
    """``auto``: Lightning's progress bar on a terminal (it draws on stdout), one log line per epoch elsewhere."""
    return ("bar" if sys.stdout.isatty() else "log") if mode == "auto" else mode


def run_callbacks(cfg: DictConfig, folder: Path) -> tuple[list[Callback], ModelCheckpoint]:
    """``last.ckpt`` (what a resume continues from), the best validated epoch's ``best.ckpt`` beside it, and the
    learning rate per epoch; and the best checkpoint's callback."""
    last = ModelCheckpoint(dirpath=folder / CHECKPOINTS, save_last=True, save_top_k=0,
                           every_n_epochs=cfg.checkpoint.every_n_epochs)
    best = ModelCheckpoint(dirpath=folder / CHECKPOINTS, filename=BEST, monitor="val_acc", mode="max", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    return [last, best, LearningRateMonitor(logging_interval="epoch")], best


def best_of(best: ModelCheckpoint) -> dict[str, Any]:
    """What ``result.json`` says of the best validated epoch."""
    if best.best_model_score is None:
        return {"best_val_acc": None, "best_checkpoint": None}
    return {"best_val_acc": best.best_model_score.item(), "best_checkpoint": best.best_model_path}


def publish(cfg: DictConfig, folder: Path, block: Block, module: Classifier, data, result: dict[str, Any],
            logger: Logger | bool) -> None:
    """Rank 0's part: the exported model, ``result.json``, the printed line, the model's other formats, and on W&B
    the summary and the model files as an artifact."""
    model_file = export.save(folder / cfg.export, block, cfg.template, dataset_settings(cfg.dataset, data),
                             module.net.state_dict())
    (folder / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    log.info(f"test accuracy {result['test_acc']:.4f} (validation {result['val_acc']:.4f}) after {result['epochs']} "
             f"epochs; model saved to {model_file}")
    files = [model_file, *other_formats(cfg, folder, model_file)]  # after the result: an export may be refused
    if isinstance(logger, WandbLogger):
        run = logger.experiment
        if result.get("search_run"):  # a block from a search: its history and top blocks are this run's input
            record_lineage(run, result["search_run"])
        run.summary.update({k: v for k, v in result.items() if v is not None})
        if cfg.logger.get("artifacts", True):  # a folder trained before the setting existed: on
            log_model_artifact(run, files, result)
        run.finish()


def other_formats(cfg: DictConfig, folder: Path, model_file: Path) -> list[Path]:
    """``model.onnx`` and ``model.pt2`` (``cfg.onnx``, ``cfg.program``; null skips one) from the saved model file,
    each checked against it on a batch of images."""
    model = export.load(model_file)
    example = export.example_input(model.blockqnn, batch=EXAMPLE_BATCH)
    written = [export.save_program(model, folder / cfg.program, example) if cfg.program else None,
               export.save_onnx(model, folder / cfg.onnx, example) if cfg.onnx else None]
    return [path for path in written if path is not None]


def dataset_settings(dataset_cfg: DictConfig, data) -> dict[str, Any]:
    """The dataset config as trained on, with what the data filled in (classes, measured normalisation)."""
    settings = OmegaConf.to_container(dataset_cfg, resolve=True)
    settings["num_classes"] = data.num_classes
    settings["classes"] = list(data.classes) if data.classes else None
    if settings.get("mean") is None or settings.get("std") is None:
        settings["mean"], settings["std"] = map(list, data.normalization())
    return settings


@hydra_app("train")
def main(cfg: DictConfig) -> float:
    """One training; returns its test accuracy, what a sweep that optimises (``hydra/sweeper=optuna``) maximises."""
    if int(os.environ.get("LOCAL_RANK") or 0) > 0:  # a DDP rank its launcher started (Lightning, torchrun)
        die_with(os.getppid())  # dies with it: a rank 0 SIGKILLed must not leave the others waiting in a collective
    hydra = HydraConfig.get()
    return train(cfg, Path(hydra.runtime.output_dir), command_line_keys(hydra.overrides.task))["test_acc"]


if __name__ == "__main__":
    main()
