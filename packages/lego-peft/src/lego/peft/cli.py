"""The ``lego-peft`` command: inspect, merge and quantize at the file level.

```
lego-peft info ADAPTER_DIR                           base model, targets, rank, parameter counts
lego-peft merge --model DIR --adapter DIR -o OUT     a transformers model directory, merged
lego-peft quantize --model DIR -o OUT                NF4 weights in bitsandbytes' layout
```

Everything works on files (PEFT's adapter files, transformers' model directories), so no
model library is needed. Outputs are written under a temporary name and renamed when
complete; an output over an input, an existing non-empty output folder, missing or damaged
files exit 2 with one message (lego.protocols' command-line conventions: 130 on Ctrl-C,
143 on SIGTERM, leaving nothing behind).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from lego.peft.merge_files import merge_adapter_files
from lego.peft.peft_format import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PEFT_PREFIX
from lego.peft.quantize_files import quantize_model_files
from lego.protocols import ConfigError, FormatError, make_parser, read_json, run_cli

__all__ = ["adapter_info", "build_parser", "main"]

PROG = "lego-peft"


def adapter_info(path: str | Path) -> dict[str, Any]:
    """What an adapter directory holds, without loading its tensors.

    Args:
        path: A PEFT adapter directory (or an adapter checkpoint of lego-train).

    Returns:
        ``base_model`` (``base_model_name_or_path``), ``base_sha256`` (checkpoints only),
        ``peft_type``, ``r``, ``lora_alpha``, ``use_rslora``, ``use_dora``,
        ``target_modules``, ``modules_to_save``, ``adapted_modules`` (the modules with
        LoRA tensors), ``parameters`` (every tensor), ``lora_parameters``,
        ``saved_parameters`` (modules to save and biases), ``file_bytes``.

    Raises:
        ConfigError: A missing folder or file.
        FormatError: A damaged file.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    config = read_json(folder / ADAPTER_CONFIG_NAME, what="PEFT adapter config")
    if not isinstance(config, dict):
        raise FormatError(
            "adapter_config.json must hold a JSON object",
            path=folder / ADAPTER_CONFIG_NAME,
            hint="write it with PEFT or lego-peft",
        )
    weights = folder / ADAPTER_WEIGHTS_NAME
    reference_file = folder / "base_model.json"
    shapes: dict[str, list[int]] = {}
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                shapes[key] = list(handle.get_slice(key).get_shape())
    except FileNotFoundError:
        raise ConfigError(
            "the adapter has no weights file",
            path=weights,
            hint="copy the whole adapter directory",
        ) from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FormatError(
            f"the adapter weights are not a valid safetensors file ({err})",
            path=weights,
            hint="save the adapter again",
        ) from None
    lora = {k: v for k, v in shapes.items() if ".lora_" in k}
    modules = sorted(
        {k[len(PEFT_PREFIX) :].split(".lora_")[0] for k in lora if k.startswith(PEFT_PREFIX)}
    )

    def count(items: dict[str, list[int]]) -> int:
        total = 0
        for shape in items.values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    sha = None
    if reference_file.exists():
        reference = read_json(reference_file, what="base model reference")
        if isinstance(reference, dict):
            sha = reference.get("sha256")
    return {
        "base_model": config.get("base_model_name_or_path"),
        "base_sha256": sha,
        "peft_type": config.get("peft_type"),
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "use_rslora": bool(config.get("use_rslora", False)),
        "use_dora": bool(config.get("use_dora", False)),
        "target_modules": config.get("target_modules"),
        "modules_to_save": config.get("modules_to_save"),
        "adapted_modules": modules,
        "parameters": count(shapes),
        "lora_parameters": count(lora),
        "saved_parameters": count(shapes) - count(lora),
        "file_bytes": weights.stat().st_size,
    }


def _print_info(info: dict[str, Any]) -> None:
    targets = info["target_modules"]
    shown = targets if isinstance(targets, str) else ", ".join(targets or [])
    lines = [
        f"base model:       {info['base_model'] or '(not recorded)'}",
        *([f"base sha256:      {info['base_sha256']}"] if info["base_sha256"] else []),
        f"type:             {info['peft_type']}"
        + (" (DoRA)" if info["use_dora"] else "")
        + (" (rsLoRA)" if info["use_rslora"] else ""),
        f"rank:             r={info['r']}, lora_alpha={info['lora_alpha']}",
        f"targets:          {shown}",
        f"adapted modules:  {len(info['adapted_modules'])}",
        f"modules to save:  {', '.join(info['modules_to_save'] or []) or '-'}",
        f"parameters:       {info['parameters']:,} ({info['lora_parameters']:,} LoRA, "
        f"{info['saved_parameters']:,} saved in full)",
        f"file size:        {info['file_bytes'] / 2**20:.2f} MiB",
    ]
    print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    """The ``lego-peft`` argument parser.

    Returns:
        The parser with its three subcommands.
    """
    parser = make_parser(
        PROG,
        "Inspect PEFT adapters, merge one into a transformers model directory, or quantize a "
        "model directory to NF4 (bitsandbytes' layout).",
        example=(
            "lego-peft info out/adapter\n"
            "lego-peft merge --model llama-3.2-1b --adapter out/adapter -o llama-merged\n"
            "lego-peft quantize --model llama-3.2-1b -o llama-nf4"
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="what an adapter holds")
    info.add_argument("adapter", metavar="ADAPTER_DIR", help="a PEFT adapter directory")
    info.add_argument("--json", action="store_true", help="print JSON")
    merge = commands.add_parser("merge", help="merge an adapter into a model directory")
    merge.add_argument("--model", required=True, metavar="DIR", help="transformers model dir")
    merge.add_argument("--adapter", required=True, metavar="DIR", help="PEFT adapter directory")
    merge.add_argument("-o", "--output", required=True, metavar="OUT", help="new folder")
    quantize = commands.add_parser("quantize", help="quantize a model directory to NF4")
    quantize.add_argument("--model", required=True, metavar="DIR", help="transformers model dir")
    quantize.add_argument("-o", "--output", required=True, metavar="OUT", help="new folder")
    quantize.add_argument(
        "--no-double-quant",
        action="store_true",
        help="keep the absmax scales in fp32 (4.5 bits per weight instead of ~4.13)",
    )
    quantize.add_argument(
        "--compute-dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="bnb_4bit_compute_dtype recorded in config.json (default float32)",
    )
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "info":
        info = adapter_info(args.adapter)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            _print_info(info)
    elif args.command == "merge":
        print(f"{PROG}: merging {args.adapter} into {args.model} ...", file=sys.stderr, flush=True)
        done = merge_adapter_files(args.model, args.adapter, args.output)
        print(
            f"{PROG}: merged {done['merged']} weights"
            + (f", replaced {done['replaced']} tensors" if done["replaced"] else "")
            + f" -> {args.output}"
        )
    else:
        print(f"{PROG}: quantizing {args.model} ...", file=sys.stderr, flush=True)
        done = quantize_model_files(
            args.model,
            args.output,
            double_quant=not args.no_double_quant,
            compute_dtype=args.compute_dtype,
        )
        print(
            f"{PROG}: quantized {done['quantized']} weights to NF4 "
            f"({done['bytes_before'] / 2**20:.1f} -> {done['bytes_after'] / 2**20:.1f} MiB) "
            f"-> {args.output}"
        )
    return 0


def main() -> NoReturn:
    """The console-script entry point."""
    sys.exit(run_cli(_main, prog=PROG))


if __name__ == "__main__":
    main()
