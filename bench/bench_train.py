"""Train-step time and peak memory of CObL vs the base UNet run over the same K+1 slots.

``--config sd`` (default) builds the real size without weights: Stable Diffusion 2.1-base's UNet from its
config in code (``cobl.configs.sd21_base_unet_kwargs``, 865,910,724 parameters), random init, plus the
CObL modules (or ``--pretrained DIR``, a local diffusers SD folder, for the real weights). ``--config tiny``
is the demo's model. Variants, each in a fresh process so its peak memory (CUDA max allocated, or CPU max RSS)
is its own:

  * ``cobl``: CObL forward + backward (+ the AdamW step on the trainable part with ``--optimizer``);
  * ``unet``: the base UNet alone on the same K+1 slots (batched), forward + backward; for ``sd`` its weights
    are frozen, so the backward runs to the input latents (what any module before the last block needs),
    for ``tiny`` the UNet trains.

    python bench/bench_train.py                                   # CPU: sd, K=6, latent 16x16, batch 1
    python bench/bench_train.py --resolution 512 --batch-size 2 --bf16 --gradient-checkpointing  # a GPU
    python bench/bench_train.py --config tiny --num-objects 3 --resolution 64 --batch-size 8 --codec-factor 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time


def _build(args: dict, variant: str = "cobl"):
    import torch
    from diffusers import UNet2DConditionModel

    from cobl.codec import SpaceToDepthCodec
    from cobl.configs import get_config, sd21_base_unet_kwargs
    from cobl.factory import _module_options, build
    from cobl.network import CObLModel

    config = get_config(args["config"]).replace(
        num_objects=args["num_objects"], resolution=args["resolution"], depth_condition=not args["no_depth"]
    )
    if config.codec == "space_to_depth" and args.get("codec_factor"):
        config = config.replace(space_to_depth_factor=args["codec_factor"], photo_skip=True)
    if config.name == "sd" and not args.get("pretrained"):

        class _Latents:  # the SD VAE's latent shape, without building the VAE
            latent_channels, downsample = 8, 8

        unet = dict(sd21_base_unet_kwargs(), sample_size=config.resolution // 8)
        if variant == "unet":  # the UNet alone: its peak memory must not include the added modules
            return config, _BareUNet(UNet2DConditionModel(**unet).requires_grad_(False)), 8, 8
        model = CObLModel(unet_config=unet, prompt_tokens=77, **_module_options(config, _Latents))
        with torch.no_grad():
            model.prompt_embedding.normal_()
        return config, model, _Latents.latent_channels, _Latents.downsample
    model, codec, _ = build(config, pretrained=args.get("pretrained"))
    if isinstance(codec, SpaceToDepthCodec):
        return config, model, codec.latent_channels, codec.downsample
    return config, model, codec.latent_channels, codec.downsample


class _BareUNet:
    """The interface ``_measure`` uses, for a bare base UNet (its own forward is the plain one)."""

    def __init__(self, unet) -> None:
        import contextlib

        import torch

        self.unet = unet
        self.condition_channels = 4
        self.prompt_embedding = torch.randn(1, 77, unet.config.cross_attention_dim)
        self.plain = contextlib.nullcontext

    def to(self, device):
        self.unet.to(device)
        return self

    def train(self):
        self.unet.train()
        return self

    def enable_gradient_checkpointing(self):
        self.unet.enable_gradient_checkpointing()

    def trainable_parameters(self):
        return [p for p in self.unet.parameters() if p.requires_grad]

    def parameters(self):
        return self.unet.parameters()

    def named_parameters(self):
        return (("unet." + n, p) for n, p in self.unet.named_parameters())

    def zero_grad(self, set_to_none: bool = True):
        self.unet.zero_grad(set_to_none=set_to_none)


def _measure(variant: str, args: dict, queue) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    config, model, c, f = _build(args, variant)
    build_s = time.perf_counter() - t0
    model.to(device).train()
    if args["gradient_checkpointing"]:
        model.enable_gradient_checkpointing()
    s, b, h = config.num_slots, args["batch_size"], config.resolution // f
    c0 = model.unet.config.in_channels
    x = torch.randn(b, s, c, h, h, device=device)
    cond = torch.rand(b, model.condition_channels, h * f, h * f, device=device) * 2 - 1
    t = torch.randint(0, 1000, (b,), device=device)
    text = model.prompt_embedding.expand(b * s, -1, -1).to(device)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4) if args["optimizer"] and variant == "cobl" else None
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=args["bf16"])

    def step() -> None:
        if variant == "cobl":
            with autocast:
                loss = (model(x, t, cond).float() - x).pow(2).mean()
            loss.backward()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                model.zero_grad(set_to_none=True)
        else:
            inp = x[:, :, :c0].flatten(0, 1).clone().requires_grad_(not config.train_base)
            with model.plain(), autocast:
                out = model.unet(inp, t.repeat_interleave(s), encoder_hidden_states=text).sample
            (out.float() - x[:, :, :c0].flatten(0, 1)).pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args["steps"]):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in params)
    base = sum(p.numel() for n, p in model.named_parameters() if n.startswith("unet."))
    queue.put(
        {
            "variant": variant,
            "step_s": round((time.perf_counter() - start) / args["steps"], 3),
            "peak_mib": round(peak),
            "build_s": round(build_s, 1),
            "device": device if device == "cpu" else torch.cuda.get_device_name(),
            "latent": h,
            "slots": s,
            "total_params": total,
            "frozen_params": total - trainable,
            "trainable_params": trainable,
            "base_unet_params": base,
        }
    )


def main() -> None:
    from app.threads import configure_threads

    configure_threads()  # the OpenMP wait policy of `cobl`, inherited by the measuring processes
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="sd")
    p.add_argument("--pretrained", default=None, help="a local diffusers SD folder (default: random init)")
    p.add_argument("--num-objects", type=int, default=6)
    p.add_argument("--resolution", type=int, default=128, help="image size (sd: latent = resolution / 8)")
    p.add_argument("--codec-factor", type=int, default=None, help="tiny: space-to-depth factor")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-depth", action="store_true", help="photo adapter only")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--optimizer", action="store_true", help="include the AdamW step (CObL)")
    p.add_argument("--variants", default="cobl,unet")
    args = vars(p.parse_args())
    ctx = mp.get_context("spawn")
    results = {}
    for variant in args["variants"].split(","):
        q = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(variant, args, q))
        proc.start()
        results[variant] = q.get()
        proc.join()
    for r in results.values():
        print(
            f"{r['variant']:>6}: {r['step_s']:8.2f} s/step  peak {r['peak_mib']:8d} MiB  "
            f"({r['slots']} slots, latent {r['latent']}, {r['device']}, trainable {r['trainable_params']:,})"
        )
    if "cobl" in results and "unet" in results:
        ratio = results["cobl"]["step_s"] / results["unet"]["step_s"]
        print(f"CObL / base UNet over the same K+1 slots: {ratio:.2f}x time")
    print(json.dumps({"settings": args, "results": results}))


if __name__ == "__main__":
    main()
