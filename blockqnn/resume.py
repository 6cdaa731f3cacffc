"""Continuing a run folder, for ``blockqnn.search`` and ``blockqnn.train``: one rule, and the guards around it.

The rule: what the command line does not name comes from the stored run, so ``resume=RUN_DIR`` alone continues
as started; a section it names whole (``trainer=final``) replaces the stored one, a leaf it names
(``trainer.max_epochs=60``) replaces that leaf only. Then the guards: what gives the stored results their meaning
(a search's history, a training's checkpoint) must agree with the merged config, or the resume is refused with
the differing keys. Paths are stored absolute and compared as locations, so data and tables may move. Every
check reads the folder only: a refused resume changes nothing in it.

The stored run is read once per resume: the two run-folder resolvers registered here let Hydra name the folder a
resume writes into after a glance at its files, and the command itself opens the run (``open_search_run``,
``check_train_folder``) and carries what it read.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from blockqnn.candidate import Status
from blockqnn.errors import TableError, UserError
from blockqnn.lock import check_free
from blockqnn.store import Store, check_run_folder, is_run

# Leaves that say where or on what a run computes, not what its results mean: data and tables may move, and a
# resumed run may use other hardware. Ignored when a resume is compared with its stored config.
LOCATION_KEYS = ("root", "download", "table", "accelerator", "cudnn_benchmark", "eval_batch_size")
# Leaves holding paths; stored absolute.
PATH_KEYS = ("root", "table")

# Config sections that give a search's stored candidates their meaning: a resumed search must agree on all of them.
HISTORY_KEYS = ("seed", "space", "dataset", "template", "trainer", "reward", "agent", "failed_reward", "stopping")

# A train folder: its config file, checkpoints, and the checkpoint a resume continues from.
CONFIG_FILE, CHECKPOINTS, LAST = "config.yaml", "checkpoints", "last.ckpt"
# What a train folder's config fixes: a resume must train the same network on the same data...
SAME_NETWORK = ("block", "template", "dataset")
# ...and takes these from the folder unless the command line names them (the recipe and logging may change).
ADOPTED = (*SAME_NETWORK, "seed", "trainer", "logger", "checkpoint", "export", "onnx", "program")
# What to do about a corrupt config.yaml, and about a corrupt checkpoint.
RESTORE = "restore it, or train into a new folder"
RESTART = "delete it to train this folder from the start, or train into a new folder"


# ---- the rule, for both entry points -------------------------------------------------------------------------------
def merge_stored(stored: DictConfig, cfg: DictConfig, sections: Sequence[str], command_line: set[str] | None
                 ) -> DictConfig:
    """The one place a stored config (a search's history, a train folder's, the search a block came from) is
    merged into the config a command runs with: each of ``sections`` comes from ``stored`` unless the command line
    names it whole (``trainer=final``), so ``resume=RUN`` alone continues as started; leaves it names
    (``trainer.max_epochs=60``) then replace the stored values. ``command_line``: the keys the command line set
    (``command_line_keys``); None (an API call, no command line): ``cfg`` stands, but for the sections it leaves
    null (a training's block)."""
    merged = cfg.copy()
    with open_dict(merged):
        for section in taken_sections(stored, cfg, sections, command_line):
            replace_section(merged, section, stored[section])
            for key in sorted(k for k in command_line or () if k.startswith(f"{section}.")):
                OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def taken_sections(stored: DictConfig, cfg: DictConfig, sections: Sequence[str], command_line: set[str] | None
                   ) -> list[str]:
    """Which of ``sections`` ``merge_stored`` takes from ``stored``: those stored and not named whole on the command
    line; without a command line, those ``cfg`` leaves null."""
    def left_out(section: str) -> bool:
        return cfg.get(section) is None if command_line is None else section not in command_line

    return [section for section in sections if section in stored and left_out(section)]


def replace_section(cfg: DictConfig, key: str, value: Any) -> None:
    """``cfg[key] = value``, also where a schema types the section: OmegaConf refuses a plain mapping there, but
    its keys are fixed, so merging the value in replaces every one of them."""
    cfg[key] = OmegaConf.merge(cfg[key], value) if is_dataclass(OmegaConf.get_type(cfg, key)) else value


def command_line_keys(overrides: Sequence[str], preset_sections: Sequence[str] = ()) -> set[str]:
    """The config keys command-line overrides set (``+trainer.max_epochs=60`` -> ``trainer.max_epochs``,
    ``dataset@x=y`` -> ``dataset``): on resume, what comes from the command line rather than from the stored run.
    A preset (``experiment=``) may set any section: with it, ``preset_sections`` count as set too."""
    keys = {o.lstrip("+~").split("=")[0].split("@")[0] for o in overrides}
    return keys | set(preset_sections) if "experiment" in keys else keys


def changed_leaves(
    old: DictConfig | Mapping[str, Any], new: DictConfig | Mapping[str, Any], sections: Sequence[str],
    ignored: Sequence[str] = (),
) -> list[str]:
    """``key (old -> new)`` for each resolved leaf under ``sections`` that differs, leaves named in ``ignored``
    aside: what a resumed run (search or training) may not change. A leaf one side lacks agrees with null and with
    false: a setting added since a run was stored, left off (``null``, or ``false`` for a switch), keeps the run's
    meaning."""
    before, after = _leaves(old), _leaves(new)
    keys = sorted(
        key for key in before.keys() | after.keys()
        if key.split(".")[0] in sections and key.split(".")[-1] not in ignored and _differs(key, before, after)
    )
    return [f"{k} ({before.get(k, '<unset>')} -> {after.get(k, '<unset>')})" for k in keys]


def _differs(key: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    if key in before and key in after:
        return before[key] != after[key]
    value = before.get(key, after.get(key))
    return value is not None and value is not False


def _leaves(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg), "")
    return flat


def absolute_locations(cfg: DictConfig) -> DictConfig:
    """Data roots and tables as absolute paths (``~`` expanded), so that a stored run resumes from any folder."""
    cfg = cfg.copy()

    def walk(node: DictConfig) -> None:
        for key in node:
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value)
            elif key in PATH_KEYS and isinstance(value, str):
                node[key] = str(Path(value).expanduser().absolute())

    for section in ("dataset", "space"):
        if isinstance(cfg.get(section), DictConfig):
            walk(cfg[section])
    return cfg


def register_run_folder_resolvers(entry: str, is_folder: Callable[[str], bool], check_kind: Callable[[str], None]
                                  ) -> None:
    """The two resolvers an entry point's conf names its run folder with (``conf/search.yaml``, ``conf/train.yaml``):

    - ``blockqnn.<entry>_dir:${resume},NEW``: the folder to resume, once ``check_kind`` finds it is one (a glance at
      its files: the run itself is read once, by the command), else a new one;
    - ``blockqnn.<entry>_hydra_subdir:${hydra.run.dir},${now:...}``: where Hydra writes the job's config. A resume
      (``resume=`` or ``hydra.run.dir=``) keeps the folder's original ``.hydra`` and writes its own beside it; a
      folder another process holds (``blockqnn.lock``) is refused before Hydra writes. The stamp comes from Hydra's
      cached ``now``: every read of the setting names the same folder.

    A run the command then refuses (a damaged history, a config that changes it) keeps nothing of this start:
    ``blockqnn.cli`` and ``blockqnn.leftovers`` remove what Hydra wrote.
    """

    def run_dir(resume: str | None, default: str) -> str:
        if resume is None:
            return default
        check_kind(resume)
        return str(resume)

    def hydra_subdir(folder: str, stamp: str) -> str:
        check_free(folder)
        return f".hydra/resume-{stamp}" if is_folder(folder) else ".hydra"

    OmegaConf.register_new_resolver(f"blockqnn.{entry}_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver(f"blockqnn.{entry}_hydra_subdir", hydra_subdir, replace=True)


# ---- search runs ----------------------------------------------------------------------------------------------------
def open_search_run(cfg: DictConfig, run_dir: Path, command_line: set[str] | None
                    ) -> tuple[DictConfig, Store | None]:
    """The config a search runs with and, when ``run_dir`` holds one (it must when ``cfg.resume`` is set), its
    history, opened once for writing: on resume, what the command line leaves out comes from the history
    (``merge_stored``), and what it sets must agree with it. ``command_line``: the keys the command line set
    (None: an API call, ``cfg`` stands whole)."""
    if cfg.resume is None and not is_run(run_dir):
        return absolute_locations(cfg), None
    store = Store.open(run_dir)
    try:
        stored = store.config()
        cfg = merge_stored(stored, cfg, HISTORY_KEYS, command_line)
        check_same_history(stored, cfg)
        return absolute_locations(cfg), store
    except BaseException:
        store.close()
        raise


def check_same_history(stored: DictConfig | dict, cfg: DictConfig | dict) -> None:
    """Refuse to continue a history under a config that would change what its candidates mean."""
    differing = changed_leaves(stored, cfg, HISTORY_KEYS, LOCATION_KEYS)
    if differing:
        more = f" and {len(differing) - 6} more" if len(differing) > 6 else ""
        raise UserError(f"cannot resume: the config changes what the stored history means: "
                        f"{', '.join(differing[:6])}{more}")


def check_same_table(space: Any, store: Store) -> None:
    """A table may move (``space.table`` is a location), but a resumed search must read the same accuracies: the
    stored candidates are looked up again in the table given now."""
    if not space.tabular:
        return
    for row in store.candidates():
        if row["status"] != Status.OK or row["cached"]:
            continue
        try:
            now = space.lookup(row["arch"])
        except TableError as e:
            raise UserError(f"cannot resume: {e}: not the table the search started with") from None
        if now != row["accuracy"]:
            raise UserError(f"cannot resume: {space.table} gives {row['arch']} accuracy {now}, the history has "
                            f"{row['accuracy']}: not the table the search started with")


# A folder check only: the history itself is read once, by open_search_run.
register_run_folder_resolvers("search", is_run, check_run_folder)


# ---- train folders --------------------------------------------------------------------------------------------------
def is_train_folder(folder: str | Path) -> bool:
    """Whether ``folder`` was started by a training (its config is recorded): a run there resumes it."""
    return (Path(folder) / CONFIG_FILE).is_file()


def check_train_kind(folder: str | Path) -> None:
    """``folder`` was started by a training (its files only: what it holds is read once, by the training)."""
    if not is_train_folder(folder):
        raise UserError(f"resume={folder}: not a train folder (no {CONFIG_FILE} in it)")


def check_train_folder(folder: str | Path) -> DictConfig:
    """The folder's recorded config, after checking that it and the last checkpoint can be read: a broken folder
    stops the run before training writes anything into it."""
    check_train_kind(folder)
    folder = Path(folder)
    saved = _saved_config(folder / CONFIG_FILE)
    last = folder / CHECKPOINTS / LAST
    if last.is_file():
        checkpoint_epoch(last)
    return saved


def _saved_config(path: Path) -> DictConfig:
    try:
        saved = OmegaConf.create(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as e:
        raise _corrupt(path, e, RESTORE) from None
    if not isinstance(saved, DictConfig) or not isinstance(saved.get("block"), str):
        raise _corrupt(path, "no block recorded in it", RESTORE)
    return saved


def checkpoint_epoch(path: Path) -> int:
    """The epoch a Lightning checkpoint resumes at, read with its tensors memory-mapped (cheap); any failure to read
    it means the file is corrupt."""
    import torch

    if not zipfile.is_zipfile(path):
        raise _corrupt(path, "not a zip archive, which torch.save writes", RESTART)
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except OSError:  # unreadable (permissions, I/O) is not corrupt
        raise
    except Exception as e:  # torch reports a damaged archive with many exception types
        raise _corrupt(path, e, RESTART) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("epoch"), int):
        raise _corrupt(path, "no epoch recorded in it", RESTART)
    return checkpoint["epoch"]


def check_epochs_left(last: Path, max_epochs: int | None) -> None:
    """Lightning refuses to resume past ``max_epochs`` with a traceback; say it in one line before training."""
    epoch = checkpoint_epoch(last)
    if max_epochs not in (None, -1) and epoch > max_epochs:
        raise UserError(f"{last} has trained {epoch} epochs, more than trainer.max_epochs={max_epochs}: "
                        f"give trainer.max_epochs={epoch} or more")


def _corrupt(path: Path, reason: BaseException | str, remedy: str) -> UserError:
    detail = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return UserError(f"{path} is corrupt ({detail}): {remedy}")


def check_same_network(saved: DictConfig, cfg: DictConfig, folder: Path) -> None:
    """A resumed folder must train the same network on the same data: its checkpoint is only valid for those."""
    for key in SAME_NETWORK:
        differing = changed_leaves(saved, cfg, [key], LOCATION_KEYS)
        if differing:
            raise UserError(f"{folder} was trained with another {key} ({', '.join(differing[:3])}); "
                            f"train into a new folder or repeat the folder's settings")


def save_config(cfg: DictConfig, folder: Path) -> None:
    """Record what this folder trains, once the data has loaded: a folder with a config is a resumable one, and a
    resume records the recipe it continued with (``trainer.max_epochs=60``) for the next ``resume=FOLDER``.
    Replaced atomically, and only when it changes (DDP ranks all get here)."""
    path = folder / CONFIG_FILE
    text = OmegaConf.to_yaml(OmegaConf.create({k: _resolved(cfg, k) for k in cfg if k not in ("hydra", "resume")}))
    if path.is_file() and path.read_text() == text:
        return
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{CONFIG_FILE}.{os.getpid()}")
    partial.write_text(text)
    partial.replace(path)


def _resolved(cfg: DictConfig, key: str) -> Any:
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


register_run_folder_resolvers("train", is_train_folder, check_train_kind)
