"""Train-step time and peak memory of CObL vs K+1 independent passes of the plain UNet on the same shapes.

The plain UNet is the same network without the cross-slot modules (same conv_in/conv_out widths), run on the
K+1 slots (a) batched together and (b) as K+1 separate passes. Target: CObL <= 1.2x the batched plain UNet.
Each variant runs in a fresh process so its peak memory (CUDA max allocated, or CPU max RSS) is its own.

    python bench/bench_train.py [--config tiny] [--num-objects 4] [--resolution 64] [--batch-size 4] \
        [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time


def _measure(variant: str, args: dict, queue) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from cobl.configs import get_config
    from cobl.factory import build

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = get_config(args["config"]).replace(
        num_objects=args["num_objects"], resolution=args["resolution"]
    )
    model, codec, _ = build(config, pretrained=args.get("pretrained"))
    s, c, cp = model.config.num_slots, model.config.slot_channels, model.config.photo_channels
    h = config.resolution // codec.downsample
    b = args["batch_size"]
    cond_tokens = model.null_encoder_hidden_states.shape[1:]
    if variant != "cobl":
        cfg = dict(model.unet.config, in_channels=c + cp, out_channels=c)
        net = UNet2DConditionModel.from_config(cfg)
    else:
        net = model
    net.to(device).train()
    if args["gradient_checkpointing"]:
        net.enable_gradient_checkpointing()
    params = [p for p in net.parameters() if p.requires_grad] if variant == "cobl" else list(net.parameters())
    if (
        variant != "cobl" and not config.train_base
    ):  # same trainable set size is not the point: train convs only
        for name, p in net.named_parameters():
            p.requires_grad_("conv_in" in name or "conv_out" in name)
        params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(b, s, c, h, h, device=device)
    photo = torch.randn(b, cp, h, h, device=device)
    t = torch.randint(0, 1000, (b,), device=device)
    cond = torch.zeros(b * s, *cond_tokens, device=device)

    def step() -> None:
        if variant == "cobl":
            loss = (net(x, t, photo) - x).pow(2).mean()
            loss.backward()
        elif variant == "plain_batched":
            inp = torch.cat([x, photo[:, None].expand(b, s, cp, h, h)], 2).flatten(0, 1)
            out = net(inp, t.repeat_interleave(s), encoder_hidden_states=cond).sample
            (out - x.flatten(0, 1)).pow(2).mean().backward()
        else:  # K+1 separate passes
            for k in range(s):
                inp = torch.cat([x[:, k], photo], 1)
                out = net(inp, t, encoder_hidden_states=cond[:b]).sample
                ((out - x[:, k]).pow(2).mean() / s).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
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
    queue.put(
        {
            "variant": variant,
            "step_s": (time.perf_counter() - start) / args["steps"],
            "peak_mib": peak,
            "device": device,
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--num-objects", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--gradient-checkpointing", action="store_true")
    args = vars(p.parse_args())
    ctx = mp.get_context("spawn")
    results = {}
    for variant in ("cobl", "plain_batched", "plain_separate"):
        q = ctx.Queue()
        proc = ctx.Process(target=_measure, args=(variant, args, q))
        proc.start()
        results[variant] = q.get()
        proc.join()
    for r in results.values():
        print(
            f"{r['variant']:>15}: {r['step_s'] * 1000:8.1f} ms/step  peak {r['peak_mib']:8.1f} MiB  "
            f"({r['params_m']:.2f} M params, {r['device']})"
        )
    cobl = results["cobl"]["step_s"]
    print(
        f"CObL / plain UNet batched over K+1 slots: {cobl / results['plain_batched']['step_s']:.2f}x "
        f"(target <= 1.2x)"
    )
    print(f"CObL / K+1 separate plain UNet passes:    {cobl / results['plain_separate']['step_s']:.2f}x")
    print(json.dumps({"settings": args, "results": results}))


if __name__ == "__main__":
    main()
