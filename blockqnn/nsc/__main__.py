"""``python -m blockqnn.nsc check CODE`` / ``show CODE [--template T] [--dataset D]``: check a code, or print its
layer table, canonical hash, density and, with a template, the network's size."""

from __future__ import annotations

import argparse
import os
import sys

from blockqnn.codes import DEFAULT_MAX_INDEX, Block, LayerType, NSCError


def _layer_table(block: Block) -> str:
    outputs = set(block.outputs())
    lines = [f"{'idx':>3}  {'type':<9} {'kernel':>6}  inputs"]
    for layer in block.layers:
        kind = LayerType(layer.type)
        inputs = ",".join(map(str, layer.preds)) if layer.preds else ",".join(map(str, sorted(outputs)))
        mark = "  -> output" if layer.index in outputs else ""
        lines.append(f"{layer.index:>3}  {kind.name.lower():<9} {layer.kernel or '':>6}  {inputs}{mark}")
    return "\n".join(lines)


def _show(block: Block, template: str | None, dataset: str) -> str:
    lines = [
        _layer_table(block),
        f"canonical: {block.canonical()}",
        f"hash: {block.canonical_hash()}",
        f"density: {block.density():.4f}",
    ]
    if template:
        lines.append(_describe_network(block, template, dataset))
    return "\n".join(lines)


def _describe_network(block: Block, template: str, dataset: str) -> str:
    """The network's size for a named template and dataset config. Imports torch and Hydra: only when asked."""
    from hydra.utils import instantiate

    from blockqnn.config import load_group
    from blockqnn.network import network_complexity

    template_cfg, dataset_cfg = load_group("template", template), load_group("dataset", dataset)
    if dataset_cfg.num_classes is None:
        raise ValueError(f"dataset {dataset} counts its classes from the data: use a dataset config that names them")
    params, flops = network_complexity(
        block, instantiate(template_cfg), dataset_cfg.channels, dataset_cfg.num_classes, dataset_cfg.image_size
    )
    return (
        f"network: template={template} dataset={dataset} ({dataset_cfg.channels}x{dataset_cfg.image_size}"
        f"x{dataset_cfg.image_size}, {dataset_cfg.num_classes} classes)\n"
        f"params: {params:,}\nflops per image: {flops:,.0f} ({flops / 1e6:.1f} MFLOPs)"
    )


def main(argv: list[str] | None = None) -> int:
    # As blockqnn.cli.prog, without importing Hydra: checking a code stays instant.
    script = os.path.basename(sys.argv[0])
    prog = script if script.startswith("blockqnn-") else "python -m blockqnn.nsc"
    parser = argparse.ArgumentParser(prog=prog, description="Check or show an NSC block code.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="validate a code").add_argument("code")
    show = sub.add_parser("show", help="layer table, canonical hash, density, and optionally network size")
    show.add_argument("code")
    show.add_argument("--template", help="stacking template (conf/template/*.yaml), e.g. cifar")
    show.add_argument("--dataset", help="dataset config giving channels, size, classes (default cifar10)")
    for p in sub.choices.values():
        p.add_argument("--max-index", type=int, default=DEFAULT_MAX_INDEX)
    args = parser.parse_args(argv)
    if getattr(args, "dataset", None) and not args.template:
        show.error("--dataset sizes a network: give --template too")
    try:
        block = Block.parse(args.code, args.max_index)
        print("ok" if args.command == "check" else _show(block, args.template, args.dataset or "cifar10"))
    except (NSCError, ValueError) as e:  # ConfigError and TemplateMismatch are ValueErrors too
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
