"""A prior of whole objects for the tiny config (``cobl train-prior``): the paper's recipe in miniature.

CObL keeps a pretrained Stable Diffusion UNet frozen and trains only the modules around it, so the completion
of hidden parts comes from a prior that has seen many whole objects. At CPU scale no such prior exists, so
this makes one: the tiny config's own base UNet (same ``UNet2DConditionModel`` architecture, same codec, same
fixed prompt) trained unconditionally, one slot latent at a time, on the amodally complete single-object
layers and the backgrounds of rendered scenes. ``cobl train --prior DIR`` then builds CObL around it
(``cobl.factory.build``); with the config's ``train_base = false`` it stays frozen, as SD does in the paper.

The output folder is a diffusers ``UNet2DConditionModel`` (``config.json`` + ``diffusion_pytorch_model
.safetensors``) with ``prior_report.json`` (options, losses, timing), ``samples.png`` (prior samples: what it
believes an object looks like) and ``README.md`` (the model card). The layer pool is built once and held in
memory, and each step's draw of layers, timesteps and noise is a function of (seed, step): a run killed and
rerun resumes from its last checkpoint (``train.common``: ``OUT/checkpoints/``, replaced by the model when
done) on the same trajectory; a rerun with other options refuses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from train.common import SimulatedKill
from train.options import PriorOptions

__all__ = ["SimulatedKill", "base_fields", "denoising_loss", "layer_pool", "train_prior"]

REPORT = "prior_report.json"
# Salt of the per-step generator, so the prior's draws never coincide with the CObL trainer's noise.
_PRIOR_SALT = 7919


# The config fields that shape the base UNet and its training target (not K, the depth input or train_base).
BASE_FIELDS = (
    "name",
    "resolution",
    "codec",
    "space_to_depth_factor",
    "unet",
    "prompt_tokens",
    "prediction_type",
    "beta_schedule",
    "num_train_timesteps",
)


def base_fields(config: Any) -> dict[str, Any]:
    whole = json.loads(config.to_json())
    return {k: whole[k] for k in BASE_FIELDS}


def layer_pool(urls: list[str], config: Any, codec: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every occupied object layer and every background of the shards, encoded to slot latents
    ``[N, C, h, w]``, with their alpha pooled to the latent grid ``[N, 1, h, w]`` (backgrounds: all 1) and
    the key of the scene each came from."""
    from cobl.data import make_dataset

    latents, alphas, keys = [], [], []
    dataset = make_dataset(
        urls, config.num_objects, config.resolution, shuffle=False, epochs=1, ids=False, depth=False
    )
    with torch.no_grad():
        for sample in dataset:
            encoded = codec.encode_layers(sample.layers[None], sample.background[None])[0]  # [S, C, h, w]
            alpha = torch.cat([sample.layers[:, 3], torch.ones_like(sample.layers[:1, 3])])  # [S, H, W]
            pooled = torch.nn.functional.adaptive_avg_pool2d(alpha[:, None], encoded.shape[-2:])
            keep = [*range(sample.num_objects), len(encoded) - 1]  # objects, then background
            latents.append(encoded[keep])
            alphas.append(pooled[keep])
            keys += [sample.key] * len(keep)
    if not latents:
        message = f"no scenes with at most {config.num_objects} objects in {urls[0]} ..."
        raise UserError(message, option="data")
    return torch.cat(latents), torch.cat(alphas), keys


def _split(keys: list[str], val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of training and held-out layers, split by scene (every layer of a scene on one side)."""
    import zlib

    held = torch.tensor([zlib.crc32(k.encode()) % 10_000 < val_fraction * 10_000 for k in keys])
    return torch.nonzero(~held)[:, 0], torch.nonzero(held)[:, 0]


def _draw(step: int, seed: int, n: int, batch: int, shape: tuple[int, ...], timesteps: int):
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 31 + _PRIOR_SALT)
    index = torch.randint(n, (batch,), generator=g)
    t = torch.randint(0, timesteps, (batch,), generator=g)
    noise = torch.randn((batch, *shape), generator=g)
    return index, t, noise


def denoising_loss(unet, prompt, scheduler, latents, alphas, t, noise, object_weight: float) -> torch.Tensor:
    """Weighted MSE of the UNet's prediction (the config's prediction type) on noised single layers."""
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=prompt.expand(len(latents), -1, -1), return_dict=False)[0]
    kind = scheduler.config.prediction_type
    target = {"epsilon": noise, "sample": latents}.get(kind)
    if target is None:
        target = scheduler.get_velocity(latents, noise, t)
    weight = 1 + object_weight * alphas
    return (((pred - target) ** 2) * weight).mean() / weight.mean()


def train_prior(opts: PriorOptions, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Train (or resume, or skip when finished with the same options) and return the report."""
    from cobl.configs import get_config

    out = Path(opts.out)
    for name in ("max_steps", "batch_size", "checkpoint_every"):
        if getattr(opts, name) < 1:
            raise UserError(f"must be >= 1, got {getattr(opts, name)}", option=name)
    config = get_config(opts.config)
    if config.codec != "space_to_depth":
        raise UserError(f"config {config.name}: the prior is for the tiny pixel codec", option="config")
    fingerprint = {**opts.fingerprint(), "model_config": base_fields(config)}
    finished = out / REPORT
    if finished.is_file():
        report = json.loads(finished.read_text())
        if report["options"] == fingerprint:
            print(f"cobl train-prior: {out} already holds this prior, skipped")
            return report
        message = f"{out}: holds a prior trained with other options; choose another --out"
        raise UserError(message, option="out")
    return _PriorRun(opts, config, fingerprint).run(stop_after_steps)


class _PriorRun:
    """One run of the prior's training: the layer pool, the UNet, its optimizer and checkpoints."""

    def __init__(self, opts: PriorOptions, config: Any, fingerprint: dict[str, Any]):
        from accelerate import Accelerator
        from diffusers import UNet2DConditionModel

        from cobl.data import expand_urls
        from cobl.factory import base_unet_config, make_codec, make_scheduler, tiny_prompt_embedding
        from train.common import lr_schedule

        self.opts, self.config, self.fingerprint, self.out = opts, config, fingerprint, Path(opts.out)
        urls = expand_urls(opts.data)
        self.codec = make_codec(config)
        unet_config = base_unet_config(config, self.codec)
        self.scheduler = make_scheduler(config)
        self.timesteps = self.scheduler.config.num_train_timesteps
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        device = self.accelerator.device
        self.prompt = tiny_prompt_embedding(config, unet_config["cross_attention_dim"]).to(device)
        pool, alphas, self.keys = layer_pool(urls, config, self.codec)
        self.pool, self.alphas = pool.to(device), alphas.to(device)
        self.train_idx, self.val_idx = _split(self.keys, opts.val_fraction)
        if len(self.train_idx) == 0 or len(self.val_idx) == 0:
            raise UserError(f"{len(self.keys)} layers are too few to hold some out", option="data")
        torch.manual_seed(opts.seed)
        unet = UNet2DConditionModel.from_config(unet_config)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=opts.lr, weight_decay=1e-2)
        schedule = lr_schedule("cosine", optimizer, 0, opts.max_steps, opts.lr)
        self.unet, self.optimizer, self.schedule = self.accelerator.prepare(unet, optimizer, schedule)

    def loss(self, index: torch.Tensor, step: int, seed: int, batch: int) -> torch.Tensor:
        """The denoising loss of draw ``step`` (of ``seed``) on the layers ``index`` picks from."""
        chosen, t, noise = _draw(step, seed, len(index), batch, tuple(self.pool.shape[1:]), self.timesteps)
        device = self.pool.device
        chosen = index[chosen].to(device)
        return denoising_loss(self.unet, self.prompt, self.scheduler, self.pool[chosen], self.alphas[chosen],
                              t.to(device), noise.to(device), self.opts.object_weight)

    def held_out_loss(self) -> float:
        """The denoising loss on held-out layers at fixed draws (the same for every call)."""
        self.unet.eval()
        with torch.no_grad():
            total = [float(self.loss(self.val_idx, j, self.opts.seed + 1, 64)) for j in range(8)]
        self.unet.train()
        return sum(total) / len(total)

    def resume(self) -> tuple[int, list[float], float | None]:
        from train.common import latest_checkpoint, load_checkpoint

        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return 0, [], None
        state = load_checkpoint(self.accelerator, ckpt)
        if state["options"] != self.fingerprint:
            message = f"{self.out}: holds a checkpoint of a prior with other options; choose another --out"
            raise UserError(message, option="out")
        print(f"cobl train-prior: resumed from step {state['global_step']}")
        return state["global_step"], state["losses"], state["held_out_loss_init"]

    def run(self, stop_after_steps: int | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from train.common import save_checkpoint, stop_if_asked

        opts = self.opts
        step, losses, initial_val = self.resume()
        if not step:
            initial_val = self.held_out_loss()
        started = time.perf_counter()
        self.unet.train()
        bar = tqdm(total=opts.max_steps, initial=step, desc="train-prior", unit="step",
                   disable=not opts.progress)
        while step < opts.max_steps:
            loss = self.loss(self.train_idx, step, opts.seed, opts.batch_size)
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.accelerator.clip_grad_norm_(self.unet.parameters(), 1.0)
            self.optimizer.step()
            self.schedule.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
            if step % opts.checkpoint_every == 0 and step < opts.max_steps:
                state = dict(options=self.fingerprint, losses=losses, held_out_loss_init=initial_val)
                save_checkpoint(self.accelerator, self.out, step, state, limit=1)
            stop_if_asked(step, stop_after_steps)
        bar.close()
        return self.finish(losses, initial_val, time.perf_counter() - started)

    def finish(self, losses: list[float], initial_val: float, seconds: float) -> dict[str, Any]:
        """Write the UNet, its samples, the report and the card to ``out`` at once (replacing checkpoints)."""
        from core.atomic import atomic_path

        report = {
            "options": self.fingerprint,
            "layers": {"train": len(self.train_idx), "held_out": len(self.val_idx),
                       "scenes": len(set(self.keys))},
            "loss_first_100": sum(losses[:100]) / max(1, len(losses[:100])),
            "loss_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
            "held_out_loss_init": initial_val,
            "held_out_loss": self.held_out_loss(),
            "seconds_this_run": round(seconds, 1),
            "parameters": sum(p.numel() for p in self.unet.parameters()),
        }
        unet = self.accelerator.unwrap_model(self.unet).to("cpu")
        with atomic_path(self.out) as tmp:
            unet.save_pretrained(tmp, safe_serialization=True)
            write_samples(unet, self.prompt.cpu(), self.scheduler, self.config, self.codec,
                          tmp / "samples.png", seed=self.opts.seed)
            (tmp / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True))
            (tmp / "README.md").write_text(model_card(report, self.opts))
        return report


def write_samples(unet, prompt, scheduler, config, codec, path: Path, seed: int = 0, count: int = 16) -> None:
    """A 4x4 grid of prior samples (DDIM, 20 steps) composited on a checkerboard: what the prior believes a
    single layer looks like."""
    from diffusers import DDIMScheduler
    from PIL import Image

    from core.images import over_checkerboard, to_uint8

    sampler = DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(20)
    g = torch.Generator().manual_seed(seed)
    side = config.resolution // codec.downsample
    x = torch.randn((count, codec.latent_channels, side, side), generator=g)
    unet.eval()
    with torch.no_grad():
        for t in sampler.timesteps:
            pred = unet(x, t, encoder_hidden_states=prompt.expand(count, -1, -1), return_dict=False)[0]
            x = sampler.step(pred, t, x).prev_sample
        images = codec.decode_slots(x)  # [N, 4, H, W] in [0, 1]
    r = config.resolution
    grid = images.reshape(4, 4, 4, r, r).permute(2, 0, 3, 1, 4).reshape(4, 4 * r, 4 * r)  # [C, H, W]
    Image.fromarray(over_checkerboard(to_uint8(grid.numpy()))).save(path)


def model_card(report: dict[str, Any], opts: PriorOptions) -> str:
    o = report["options"]
    cfg = o["model_config"]
    side = cfg["resolution"]
    layers = report["layers"]
    return f"""# Tiny CObL prior of whole objects

A diffusers `UNet2DConditionModel` ({report["parameters"]:,} parameters): the base UNet of the tiny CObL
config (its base-UNet fields are `options.model_config` in `prior_report.json`), trained unconditionally (the
config's fixed prompt) to denoise single slot latents of the pixel codec (space-to-depth factor
{cfg["space_to_depth_factor"]}, {side}x{side} RGBA): the amodally complete object layers and the backgrounds
of rendered tabletop scenes. `cobl train --prior DIR` builds CObL around it; the demo keeps it frozen and
trains only the CObL modules, as the paper does on top of Stable Diffusion.

## How it was made

    cobl train-prior --data '{o["data"]}' --config CONFIG --out DIR \\
        --max-steps {o["max_steps"]} --batch-size {o["batch_size"]} --lr {o["lr"]} --seed {o["seed"]}

- Data: {layers["train"]} layers for training and {layers["held_out"]} held out (split by scene), from
  {layers["scenes"]} scenes whose dataset seed no CObL split uses.
- Objective: the config's prediction type ({cfg["prediction_type"]}), MSE weighted 1 + {o["object_weight"]}
  under the layer's alpha; AdamW {o["lr"]} with cosine decay, gradient clip 1.
- Denoising loss: training {report["loss_first_100"]:.4f} (first 100 steps) ->
  {report["loss_last_100"]:.4f} (last 100); held-out layers {report["held_out_loss_init"]:.4f} at
  initialisation -> {report["held_out_loss"]:.4f}.
- `samples.png`: 16 unconditional samples (DDIM, 20 steps) over a checkerboard.

## Limits

Rendered primitives and meshes of this project's asset set only, at one resolution and codec: a prior for the
demo, not a general object model.
"""
