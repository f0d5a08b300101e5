"""The same training loop across the GPU nodes of a Ray cluster, with Ray Train's ``TorchTrainer``.

Ray starts one worker per GPU (or CPU worker), sets up ``torch.distributed`` (nccl/gloo) and the RANK /
WORLD_SIZE / LOCAL_RANK environment; ``train.loop.train`` then builds its ``Accelerator`` on top of that
process group, so DDP, checkpoints, resume and the export behave as under ``accelerate launch``.
``--out`` must be on storage every node sees (a shared filesystem): checkpoints and the export go there.

Failures: ``FailureConfig(max_failures=...)`` makes Ray Train restart the whole worker group when a training
worker process (or its node) dies; the restarted workers resume from the latest checkpoint this run wrote
under ``--out`` (the trainer's exact ``--resume latest``), so the final weights equal an uninterrupted run's.
Checkpoints that were already there when the run started are not resumed from unless ``--resume`` says so.

    python -m app.ray_train --address auto --num-workers 8 --use-gpu -- \
        --data '/shared/shards/train-{000000..000099}.tar' --config sd --pretrained /shared/sd21 \
        --out /shared/runs/cobl --mixed-precision bf16 --gradient-checkpointing --ema
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from train.options import TrainOptions

# Group restarts after a lost training worker before the run fails (each resumes from the latest checkpoint).
MAX_FAILURES = 3


def _checkpoints(out: str) -> list[str]:
    from train.loop import CHECKPOINT_DIR

    root = os.path.join(out, CHECKPOINT_DIR)
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n, "trainer_state.json")))


def _worker_loop(config: dict[str, Any]) -> None:
    import ray.train

    from train.loop import train

    opts = TrainOptions(**config["options"])
    if opts.resume is None and set(_checkpoints(opts.out)) - set(config["checkpoints_before"]):
        # a restart after a lost worker: this run's own latest checkpoint is the exact place to go on from
        opts = dataclasses.replace(opts, resume="latest")
    result = train(opts)
    ray.train.report(
        {"global_step": result["global_step"], "loss": result["losses"].get(result["global_step"])}
    )


def run_ray(
    opts: TrainOptions,
    num_workers: int = 2,
    use_gpu: bool = True,
    address: str | None = None,
    local: bool = False,
    max_failures: int = MAX_FAILURES,
) -> dict[str, Any]:
    """Train with ``num_workers`` Ray Train workers; ``local`` starts a private local Ray instance.

    ``max_failures``: how many times a lost worker restarts the group (from the latest checkpoint)."""
    from core.ray_local import connect, prepare_env  # auth set before Ray reads it, orphans ended

    prepare_env()
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # local: a private instance, never someone else's cluster on this machine (Ray makes its token)
    started = connect(max(2, num_workers), None if local else address or "auto", log_to_driver=not local)
    try:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "options": dataclasses.asdict(opts),
                "checkpoints_before": _checkpoints(opts.out),
            },
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}
            ),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name="cobl-train",
                storage_path=os.path.abspath(os.path.join(opts.out, "ray")),
                failure_config=FailureConfig(max_failures=max_failures),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        from infer.pipeline import MODEL_INDEX, export_info

        final = os.path.join(opts.out, "final")
        exported = export_info(final) if os.path.isfile(os.path.join(final, MODEL_INDEX)) else {}
        return {**exported, **(result.metrics or {}), "final": final}
    finally:
        if started:
            ray.shutdown()
