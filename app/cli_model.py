"""``cobl model summary``: the parameter counts of a model config, without weights.

``--config sd`` builds Stable Diffusion 2.1-base's UNet shapes from a config in code (``cobl.configs.
sd21_base_unet_kwargs``) on the meta device, so it needs neither a download nor the memory of the weights.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("model", help="inspect CObL model configs")
    sub = p.add_subparsers(dest="model_command", required=True)
    s = sub.add_parser("summary", help="total / frozen / trainable parameters and the added modules")
    s.add_argument("--config", default="sd", help="model config: tiny | sd | a config .json")
    s.add_argument("--num-objects", type=int, default=None, help="K object slots (default: the config's)")
    s.add_argument("--resolution", type=int, default=None, help="image size (default: the config's)")
    s.add_argument(
        "--no-depth", dest="depth", action="store_false", help="photo adapter only (default: photo + depth)"
    )
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=run_summary)


def summary(config_name: str, num_objects: int | None, resolution: int | None, depth: bool) -> dict:
    from cobl.configs import get_config
    from cobl.factory import build_shapes

    config = get_config(config_name).replace(
        num_objects=num_objects, resolution=resolution, depth_condition=depth
    )
    model = build_shapes(config)
    total = sum(p.numel() for p in model.parameters())
    base = sum(p.numel() for n, p in model.named_parameters() if n.startswith("unet."))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "config": config.name,
        "num_objects": config.num_objects,
        "total_params": total,
        "frozen_params": total - trainable,
        "trainable_params": trainable,
        "base_unet_params": base,
        **model.module_counts(),
        "encoder_injections": len(model.inject_gates),
    }


def run_summary(args: argparse.Namespace) -> int:
    info = summary(args.config, args.num_objects, args.resolution, args.depth)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>20}: {value:,}" if isinstance(value, int) else f"{key:>20}: {value}")
    return 0
