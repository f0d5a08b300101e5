"""Peak memory and time of guided sampling: the bounded path against the all-at-once reference.

The model is built in code with random weights (timing and memory do not depend on them): Stable Diffusion's
VAE (``cobl.configs.sd_vae_kwargs``) as the codec, K = 6 object slots, and a small UNet (``--unet small``) or
SD 2.1-base's (``--unet sd21``). Each (setting, path) runs in a fresh process, so its peak is its own: CUDA's
``max_memory_allocated``, or on the CPU the process's RSS high-water mark (``base`` is the RSS after building
the model, before sampling: libraries and weights). Paths:

  * ``bounded``: the pipeline as it is (``infer.guidance``: the decoder differentiated one image per pass,
    the UNet's blocks recomputed in backward when large);
  * ``all-at-once``: the path before it, kept here as the reference: every slot through the decoder in one
    graph, no recomputation, no reuse of the decoder gradient in mode "both".

It prints a row per run (the sampling call's wall and process CPU time), and per setting the ratios
bounded/all-at-once of peak (target <= 1/3) and time (CUDA: wall; CPU: process CPU time, which other jobs'
load on a shared machine skews less), and the largest difference between the two paths' layers (same seed
and weights: they must agree).

    python bench/bench_infer.py                                   # CPU: 128², 2 DDIM steps, x0/latents/both
    python bench/bench_infer.py --device cuda --resolution 512 --unet sd21 --steps 20 \\
        --settings x0,both,authors                                 # a GPU (SD 2.1-base shapes)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

PATHS = ("bounded", "all-at-once")
SETTINGS = {  # pipeline keyword arguments; "authors" is the named preset (its own 20 steps)
    "x0": dict(guidance_mode="x0"),
    "latents": dict(guidance_mode="latents"),
    "both": dict(guidance_mode="both"),
    "authors": dict(preset="authors"),
}
SMALL_UNET = dict(  # a two-level SD-like UNet: the decoder dominates, as it does at 512²
    layers_per_block=1,
    block_out_channels=[32, 64],
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=32,
    attention_head_dim=[2, 4],
    use_linear_projection=True,
    norm_num_groups=8,
)


def build_pipeline(args: dict):
    """The pipeline of the module docstring, on ``args["device"]``, seeded so every process gets the same."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler

    from cobl.codec import VAECodec
    from cobl.configs import sd_config, sd_vae_kwargs
    from infer.pipeline import CObLPipeline

    torch.manual_seed(0)
    config = sd_config(num_objects=args["num_objects"], resolution=args["resolution"])
    device = torch.device(args["device"])
    with device:  # built where it runs: a GPU initialises SD's 1.2 B parameters in seconds
        codec = VAECodec(AutoencoderKL(**sd_vae_kwargs()))
        model = _model(args, config, codec)
    scheduler = DDPMScheduler(beta_schedule=config.beta_schedule, prediction_type=config.prediction_type)
    pipe = CObLPipeline.from_parts(model.eval(), scheduler, codec, config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _model(args: dict, config, codec):
    import torch

    from cobl.configs import sd21_base_unet_kwargs
    from cobl.network import CObLModel

    unet = dict(sd21_base_unet_kwargs() if args["unet"] == "sd21" else SMALL_UNET)
    unet.update(sample_size=config.resolution // codec.downsample, in_channels=4, out_channels=4)
    model = CObLModel(
        unet_config=unet,
        num_slots=config.num_slots,
        slot_channels=codec.latent_channels,
        latent_downsample=codec.downsample,
        adapter_res_blocks=1 if args["unet"] == "small" else config.adapter_res_blocks,
        slot_attention_heads=2 if args["unet"] == "small" else config.slot_attention_heads,
        prompt_tokens=4 if args["unet"] == "small" else config.prompt_tokens,
    )
    with torch.no_grad():
        model.prompt_embedding.normal_()
    return model


def use_all_at_once(pipe) -> None:
    """Turn ``pipe`` (in this process) into the reference path of the module docstring."""
    from infer import guidance, pipeline

    pipe.codec.decoder_pass_pixels = None  # decode (and differentiate) every slot in one pass
    guidance.RECOMPUTE_DENOISER_ABOVE = float("inf")
    bounded = pipeline.guide_x0

    def guide_x0(x0, codec, photo, size, valid=None, known=None, *step):  # noqa: ARG001 - no reuse
        return bounded(x0, codec, photo, size, valid, None, *step)

    pipeline.guide_x0 = guide_x0


class SavedActivations:
    """Counts the bytes autograd holds for the backward pass (the tensors it saves, frozen weights left out)
    while ``hooks()`` is entered, and their peak: the activation memory of a gradient, exactly and
    independent of the allocator, the device or other processes."""

    def __init__(self, weights: list) -> None:
        self.skip = {w.data_ptr() for w in weights}
        self.live = self.peak = 0

    def hooks(self):
        import torch

        counter = self

        class Held:
            def __init__(self, t: torch.Tensor) -> None:
                self.t = t
                self.n = 0 if t.data_ptr() in counter.skip else t.numel() * t.element_size()
                counter.live += self.n
                counter.peak = max(counter.peak, counter.live)

            def __del__(self) -> None:
                counter.live -= self.n

        return torch.autograd.graph.saved_tensors_hooks(Held, lambda held: held.t)


def activations(args: dict) -> dict:
    """The parts of a guidance gradient's peak, counted with ``SavedActivations`` on the CPU at
    ``args["resolution"]``: the weights, the decoder's activations for one image (the all-at-once path holds
    2 (K + 1) of them, the bounded one ``decoder_pass``), and the denoiser gradient's with and without its
    blocks recomputed (the UNet part only)."""
    import torch

    from infer import guidance

    torch.set_num_threads(args["threads"])
    pipe = build_pipeline(dict(args, device="cpu"))
    codec, unet = pipe.codec, pipe.unet
    weights = list(unet.parameters()) + list(codec.parameters()) + list(unet.buffers())
    h = args["resolution"] // codec.downsample
    z = torch.randn(1, codec.vae_channels, h, h, requires_grad=True)
    counter = SavedActivations(weights)
    with counter.hooks():
        codec.run_decoder(z).sum().backward()
    per_image = counter.peak
    latents = torch.randn(1, unet.config.num_slots, codec.latent_channels, h, h)
    condition = torch.rand(1, unet.condition_channels, args["resolution"], args["resolution"]) * 2 - 1
    t = torch.tensor(500)
    alpha_bar = pipe.scheduler.alphas_cumprod[t].expand(1)
    denoiser = {}
    for recompute in (False, True):
        counter = SavedActivations(weights)
        with counter.hooks(), torch.enable_grad(), guidance.recomputing(unet, recompute):
            x = latents.clone().requires_grad_(True)
            _, x0 = pipe._predict(x, t, condition, alpha_bar)
            torch.autograd.grad(x0, x, torch.ones_like(x0))
        denoiser[recompute] = counter.peak
    images = 2 * unet.config.num_slots
    inputs = torch.zeros(images, codec.vae_channels, h, h)
    elements = guidance.activation_elements(unet, latents)
    return {
        "weights_mib": sum(w.numel() * w.element_size() for w in weights) / 2**20,
        "decoder_image_mib": per_image / 2**20,
        "decoder_all_mib": images * per_image / 2**20,
        "decoder_pass_images": codec.decoder_pass(inputs),
        "denoiser_plain_mib": denoiser[False] / 2**20,
        "denoiser_recomputed_mib": denoiser[True] / 2**20,
        "recomputed_by_default": elements > guidance.RECOMPUTE_DENOISER_ABOVE,
    }


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(setting: str, path: str, args: dict, out: str, queue) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    pipe = build_pipeline(args)
    if path == "all-at-once":
        use_all_at_once(pipe)
    r = args["resolution"]
    photo = torch.rand(1, 3, r, r, generator=torch.Generator().manual_seed(1))
    kwargs = dict(SETTINGS[setting], num_inference_steps=args["steps"])
    if args["device"] == "cuda":  # kernels chosen and memory pools set up before timing
        pipe(photo, generator=torch.Generator().manual_seed(0), **dict(kwargs, num_inference_steps=1))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if args["device"] == "cuda" else _peak_mib("cpu")
    start, start_cpu = time.perf_counter(), time.process_time()
    result = pipe(photo, generator=torch.Generator().manual_seed(0), **kwargs)
    if args["device"] == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    torch.save({"layers": result.layers.cpu(), "background": result.background.cpu()}, out)
    peak = _peak_mib(args["device"])
    queue.put({"peak_mib": peak, "base_mib": base, "seconds": seconds, "cpu_seconds": cpu_seconds})


def measure(setting: str, path: str, args: dict, folder: Path) -> dict:
    """One run in a fresh process: its peak, base and time, and where its layers were saved."""
    ctx = mp.get_context("spawn")
    queue, out = ctx.Queue(), str(folder / f"{setting}-{path}.pt")
    proc = ctx.Process(target=_run, args=(setting, path, args, out, queue))
    proc.start()
    row = queue.get()
    proc.join()
    return dict(row, setting=setting, path=path, out=out)


def layer_difference(a: str, b: str) -> float:
    """Largest absolute difference between two runs' layers and backgrounds."""
    import torch

    x, y = torch.load(a), torch.load(b)
    return max(float((x[k] - y[k]).abs().max()) for k in ("layers", "background"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--num-objects", type=int, default=6)
    p.add_argument("--steps", type=int, default=2, help="DDIM steps (the authors preset takes its own 20)")
    p.add_argument("--unet", default="small", choices=("small", "sd21"))
    p.add_argument("--settings", default="x0,latents,both", help=f"comma-separated, of {sorted(SETTINGS)}")
    p.add_argument("--paths", default=",".join(PATHS), help="bounded, all-at-once or both")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--activations",
        action="store_true",
        help="instead: count the activation bytes of one decoder image and of the denoiser gradient (CPU)",
    )
    args = vars(p.parse_args())
    if args["activations"]:
        row = activations(args)
        print(
            f"bench_infer --activations: K={args['num_objects']}, {args['resolution']}², SD VAE + "
            f"{args['unet']} UNet, fp32, activations autograd holds (MiB): weights {row['weights_mib']:.0f}; "
            f"decoder per image {row['decoder_image_mib']:.0f}, all {2 * (args['num_objects'] + 1)} images "
            f"{row['decoder_all_mib']:.0f}, a bounded pass ({row['decoder_pass_images']} image(s)) "
            f"{row['decoder_pass_images'] * row['decoder_image_mib']:.0f}; denoiser gradient "
            f"{row['denoiser_plain_mib']:.0f} plain, {row['denoiser_recomputed_mib']:.0f} with its blocks "
            f"recomputed (the default here: {'recomputed' if row['recomputed_by_default'] else 'plain'})"
        )
        print(json.dumps({"settings": args, "activations": row}))
        return
    settings, paths = args["settings"].split(","), args["paths"].split(",")
    unknown = sorted(set(settings) - set(SETTINGS)) + sorted(set(paths) - set(PATHS))
    if unknown:
        p.error(f"unknown setting or path: {unknown}")
    unit = "MiB allocated (CUDA)" if args["device"] == "cuda" else "MiB RSS high-water (CPU)"
    print(
        f"bench_infer: K={args['num_objects']}, {args['resolution']}², SD VAE shapes + {args['unet']} UNet "
        f"(random weights), {args['steps']} DDIM steps, {args['device']}, {args['threads']} thread(s); "
        f"peak in {unit}"
    )
    print(f"{'setting':<9} {'path':<12} {'peak':>9} {'base':>9} {'wall s':>8} {'CPU s':>8}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            for path in paths:
                row = measure(setting, path, args, Path(tmp))
                rows.append(row)
                print(
                    f"{setting:<9} {path:<12} {row['peak_mib']:9.0f} {row['base_mib']:9.0f} "
                    f"{row['seconds']:8.2f} {row['cpu_seconds']:8.2f}",
                    flush=True,
                )
        by = {(r["setting"], r["path"]): r for r in rows}
        summary = {}
        for setting in settings:
            if (setting, PATHS[0]) not in by or (setting, PATHS[1]) not in by:
                continue
            new, old = by[(setting, PATHS[0])], by[(setting, PATHS[1])]
            clock = "seconds" if args["device"] == "cuda" else "cpu_seconds"  # CPU: other jobs' load aside
            summary[setting] = dict(
                peak_ratio=new["peak_mib"] / old["peak_mib"],
                time_ratio=new[clock] / old[clock],
                max_layer_difference=layer_difference(new["out"], old["out"]),
            )
            s = summary[setting]
            verdict = "meets" if s["peak_ratio"] <= 1 / 3 else "misses"
            print(
                f"{setting}: bounded/all-at-once peak {s['peak_ratio']:.2f}x ({verdict} <= 0.33x), "
                f"{'wall' if clock == 'seconds' else 'CPU'} time {s['time_ratio']:.2f}x, layers agree to "
                f"{s['max_layer_difference']:.1e}"
            )
    for row in rows:
        row.pop("out")
    print(json.dumps({"settings": args, "runs": rows, "summary": summary}))


if __name__ == "__main__":
    main()
