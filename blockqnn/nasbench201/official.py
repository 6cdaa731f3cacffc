"""The official NAS-Bench-201 and NATS-Bench (topology) files, read as plain dicts without their APIs.

The layouts follow D-X-Y's sources, read for this module (2020 releases):

- NAS-Bench-201 v1.0 / v1.1 (``NAS-Bench-201-v1_0-e61699.pth``, ``NAS-Bench-201-v1_1-096897.pth``): ``torch.save`` of
  ``{'meta_archs': [arch strings], 'arch2infos': {index: {'less': ..., 'full': ...}}, 'evaluated_indexes': ...}``;
  ``less`` is the 12-epoch schedule and ``full`` the 200-epoch one (``nas_201_api/api_201.py``,
  ``NASBench201API.__init__``, which files them under hp ``'12'`` and ``'200'``).
- NATS-Bench topology v1.0 (``NATS-tss-v1_0-3ffb9.pickle.pbz2``): a bz2-compressed pickle of the same dict with
  ``{hp: ...}`` per index, hp ``'12'`` and ``'200'``; or its folders (``NATS-tss-v1_0-3ffb9-simple/``, ``-full/``) of
  ``meta.pickle.pbz2`` (``meta_archs``) and one ``<index:06d>.pickle.pbz2`` per architecture holding its ``{hp: ...}``
  (``nats_bench/api_topology.py``, ``NATStopology.__init__``; ``nats_bench/api_utils.py``, ``pickle_load`` and
  ``NASBenchMetaAPI.reload``, which also accepts the unpadded ``<index>.pickle.pbz2``).

Each ``...`` is an ``ArchResults.state_dict()`` (``api_utils.py`` of both): ``dataset_seed`` ``{dataset: [seeds]}``
and ``all_results`` ``{(dataset, seed): ResultsCount.state_dict()}``; ``table`` reads those.

Unpickling runs whatever the file says: these readers are for the official files, trusted as one trusts a download
of them (``torch.load(weights_only=False)``: the files hold plain dicts and numbers, pickled before weights-only
loading existed).
"""

from __future__ import annotations

import bz2
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from blockqnn.errors import TableError, TableNotFoundError
from blockqnn.spaces.nasbench201 import format_arch, parse_arch

# NAS-Bench-201 names its two schedules by size; NATS-Bench (and NAS-Bench-201's own API) by epochs.
SCHEDULES = {"less": "12", "full": "200"}
HPS = tuple(SCHEDULES.values())
PICKLE_EXT = ".pickle.pbz2"
BZ2_MAGIC = b"BZh"

# One architecture's results: {hp ('12', '200'): ArchResults state dict}.
Results = dict[str, Mapping[str, Any]]


def read_benchmark(src: Path) -> Iterator[tuple[int, str, Results]]:
    """(index, normalised arch string, results) of every architecture the file holds, in index order.

    A generator: a folder's 15,625 files are read one at a time, so that memory holds one architecture's curves."""
    if not src.exists():
        raise TableNotFoundError(f"{src} not found (give a NAS-Bench-201 .pth, a NATS-Bench .pickle.pbz2 or its "
                                 f"folder)")
    if src.is_dir():
        yield from _read_folder(src)
        return
    benchmark = _required(_load_file(src), ("meta_archs", "arch2infos"), src)
    meta_archs = benchmark["meta_archs"]
    for index in sorted(benchmark["arch2infos"]):
        yield index, _arch(meta_archs, index, src), _by_hp(benchmark["arch2infos"][index], index, src)


def _read_folder(src: Path) -> Iterator[tuple[int, str, Results]]:
    meta_file = src / f"meta{PICKLE_EXT}"
    if not meta_file.is_file():
        raise TableError(f"{src}: a folder without meta{PICKLE_EXT}, so not a NATS-Bench benchmark folder")
    meta_archs = _required(_unpickle(meta_file), ("meta_archs",), meta_file)["meta_archs"]
    for index in range(len(meta_archs)):
        yield index, _arch(meta_archs, index, src), _by_hp(_unpickle(_index_file(src, index)), index, src)


def _index_file(src: Path, index: int) -> Path:
    for name in (f"{index:06d}{PICKLE_EXT}", f"{index}{PICKLE_EXT}"):
        if (src / name).is_file():
            return src / name
    raise TableError(f"{src}: no {index:06d}{PICKLE_EXT} for architecture {index} (an incomplete download?)")


def _load_file(src: Path) -> Any:
    """A bz2 pickle (NATS-Bench) by its magic bytes, a ``.pth`` (NAS-Bench-201) by its name."""
    try:
        with src.open("rb") as f:
            head = f.read(len(BZ2_MAGIC))
    except OSError as e:
        raise TableError(f"{src}: cannot read it ({e.strerror or e})") from None
    if head == BZ2_MAGIC:
        return _unpickle(src)
    if src.suffix == ".pth":
        return _torch_load(src)
    raise TableError(f"{src}: unknown layout: expected a NAS-Bench-201 .pth file, a NATS-Bench {PICKLE_EXT} file "
                     f"or a NATS-Bench folder")


def _unpickle(path: Path) -> Any:
    try:
        with bz2.BZ2File(path, "rb") as f:
            return pickle.load(f)
    except Exception as e:  # a damaged or foreign file can fail in any way unpickling can
        raise TableError(f"{path}: not a readable bz2 pickle ({_first_line(e)})") from None


def _torch_load(path: Path) -> Any:
    import torch  # only here: the NATS-Bench layouts need no torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # as _unpickle: any failure of a foreign file is its being unreadable
        raise TableError(f"{path}: not a readable torch.save file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _required(value: Any, keys: tuple[str, ...], where: Path | str) -> Mapping[str, Any]:
    """``value`` as a dict holding ``keys``; else one line naming the first key it lacks."""
    if not isinstance(value, Mapping):
        raise TableError(f"{where}: a {type(value).__name__} where a dict with {', '.join(map(repr, keys))} belongs")
    missing = [key for key in keys if key not in value]
    if missing:
        shown = sorted(map(str, value))[:8]
        raise TableError(f"{where}: no {missing[0]!r} (keys: {shown}): not a NAS-Bench-201 / NATS-Bench topology file")
    return value


def _arch(meta_archs: Any, index: int, src: Path) -> str:
    try:
        return format_arch(parse_arch(meta_archs[index]))
    except (IndexError, KeyError, TypeError):
        raise TableError(f"{src}: meta_archs has no architecture string for index {index}") from None
    except TableError as e:  # e.g. NATS-Bench's size space, whose archs are channel lists
        raise TableError(f"{src}: architecture {index}: {e}") from None


def _by_hp(entry: Any, index: int, src: Path) -> Results:
    """{'12': ..., '200': ...} from NAS-Bench-201's ``less``/``full`` or NATS-Bench's hp keys."""
    where = f"{src}: architecture {index}"
    if not isinstance(entry, Mapping):
        raise TableError(f"{where}: a {type(entry).__name__} where its results belong")
    if set(SCHEDULES) <= set(entry):
        return {hp: entry[name] for name, hp in SCHEDULES.items()}
    if set(HPS) <= set(entry):
        return {hp: entry[hp] for hp in HPS}
    raise TableError(f"{where}: results {sorted(map(str, entry))}; expected 'less' and 'full' (NAS-Bench-201) "
                     f"or '12' and '200' (NATS-Bench)")
