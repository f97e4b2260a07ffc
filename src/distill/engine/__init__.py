"""The loop machinery every family uses: device, precision, accumulation, clipping, schedules,
checkpoints with exact resume, metrics, progress. `accelerate` does devices, mixed precision
and distributed wrapping. `Engine.fit(method, loader, train_cfg, eval_fn=..., on_eval=..., stop=...)`
is the loop the families use; written out, it is:

    engine = Engine(cfg.engine, out_dir, seed=cfg.seed, total_steps=n)
    model, opt, sched = engine.prepare(model, opt, sched)
    engine.resume(model, opt, sched)                    # no-op on a fresh run
    for batch in engine.batches(loader, epochs):        # skips what a resumed run already saw
        with engine.autocast():
            terms = objective(batch)                    # dict of named loss terms
        engine.step(terms, weights)                     # backward, accumulate, clip, step, log
        engine.checkpoint_if_due(model, opt, sched)
    engine.finish()

A run killed at any point and resumed from its last checkpoint ends with the same weights as an
uninterrupted run (same seed, CPU): data order is a function of (seed, epoch), and the checkpoint
holds model, optimiser, scheduler, scaler, RNG states and the loop position.

With several processes, `engine.strategy` picks how the trained module is spread: `ddp` (default)
keeps a full copy on each process and averages gradients; `fsdp` shards it (torch FSDP2, one unit
per repeated block) and also shards the frozen teachers it holds, for the length of the phase.
`finish()` gives the modules back whole, and checkpoints hold full (gathered) weights either way.

Files: `loop.py` (Engine: prepare, batches, step), `setup.py` (device, precision, optimiser,
schedule), `checkpoint.py` (format, atomic save, exact resume), `sharding.py` (FSDP),
`metrics.py` (metrics.jsonl, TensorBoard, progress, evaluation schedule).
"""
from distill.engine.loop import Engine
from distill.engine.setup import (build_optimizer, build_scheduler, make_accelerator, resolve_device, schedule_factor,
                                   unwrap)

__all__ = ["Engine", "build_optimizer", "build_scheduler", "make_accelerator", "resolve_device", "schedule_factor",
           "unwrap"]
