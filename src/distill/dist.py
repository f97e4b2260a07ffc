"""Process-group facts for code outside the engine (runners writing files, caches).

Under `distill run --nproc N` (torchrun underneath) every process runs the same runner; only
the main process writes run-folder files, and the others wait for it where they need them.
"""
from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if world_size() > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


class main_first:
    """`with main_first(): ...` runs the block on the main process first, then on the others
    (e.g. the main process writes a cache that the others then read)."""

    def __enter__(self):
        if not is_main():
            barrier()
        return self

    def __exit__(self, *exc):
        if is_main():
            barrier()
        return False


# ---------------------------------------------------------------------- FSDP (engine.strategy=fsdp)
# torch's FSDP2 (`fully_shard`) shards a module in place: each parameter becomes a DTensor holding
# 1/N of it on each process, and hooks gather a unit's parameters for its forward (and backward)
# and free them after. The engine shards a phase's trainable module and its frozen teachers when
# the phase starts and gives them back as plain modules with full weights when it ends, so code
# outside a training phase (saving, evaluation, caches, main-process-only work) sees ordinary
# modules.


def fsdp_units(module) -> list:
    """The repeated blocks of `module` (every child of an nn.ModuleList that has parameters, as in
    transformers), innermost first: each gets its own FSDP unit."""
    from torch import nn

    units: dict[int, tuple[int, object]] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList):
            for k, child in m.named_children():
                units[id(child)] = (f"{name}.{k}".count("."), child)
    has_params = [(depth, m) for depth, m in units.values() if any(True for _ in m.parameters())]
    return [m for _, m in sorted(has_params, key=lambda dm: -dm[0])]


def fsdp_shard(module, *, root: bool = True, reshard_after_forward: bool | None = None):
    """Apply FSDP2 to each block of `module` (see `fsdp_units`), then, if `root`, to `module` itself
    (which then shards the parameters outside the blocks)."""
    from torch.distributed.fsdp import fully_shard

    kw = {} if reshard_after_forward is None else {"reshard_after_forward": reshard_after_forward}
    for unit in fsdp_units(module):
        fully_shard(unit, **kw)
    if root:
        fully_shard(module, **kw)
    return module


def fsdp_callable_alone(root, sub) -> list:
    """Let `sub`, a submodule inside `root`'s FSDP unit, be called on its own (e.g. a student
    evaluated during training): when `root` is not running, the root unit's parameters are
    gathered for the call and freed after it. Every process must make the call. Returns the hook
    handles (remove them before `fsdp_release`)."""
    active = {"root": False, "gathered": False}

    def root_pre(m, args):
        active["root"] = True

    def root_post(m, args, out):
        active["root"] = False

    def pre(m, args):
        if not active["root"]:
            root.unshard()
            active["gathered"] = True

    def post(m, args, out):
        if active["gathered"]:
            active["gathered"] = False
            root.reshard()

    return [root.register_forward_pre_hook(root_pre), root.register_forward_hook(root_post, always_call=True),
            sub.register_forward_pre_hook(pre), sub.register_forward_hook(post, always_call=True)]


def is_fsdp(module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return any(isinstance(m, FSDPModule) for m in module.modules())


def local_numel(module) -> int:
    """Parameter elements this process holds (a shard of each parameter under FSDP)."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in module.parameters())


def _is_fsdp_hook(fn) -> bool:
    import functools

    for _ in range(8):  # unwrap partials, bound methods and torch's hook wrappers
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__func__"):
            fn = fn.__func__
        elif type(fn).__name__ == "_WrappedHook" and hasattr(fn, "hook"):
            fn = fn.hook
        else:
            break
    return (getattr(fn, "__module__", None) or "").startswith("torch.distributed.fsdp")


def fsdp_release(module) -> None:
    """Undo `fsdp_shard` in place (every process must call it): gather each sharded parameter into
    a plain full parameter (same requires_grad; a parameter shared by several modules, such as tied
    input and output embeddings, stays one parameter), and remove FSDP's hooks, class and registry entries,
    so the module works in one process again and can be sharded again later."""
    import sys

    from torch import nn
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    import torch.distributed._composable.contract  # noqa: F401  (the package re-exports a function of that name)
    import torch.distributed._composable_state as composable_state

    contract = sys.modules["torch.distributed._composable.contract"]
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()  # register the sharded parameters (a root may still hold gathered ones)
    full: dict[int, nn.Parameter] = {}  # one plain parameter per sharded one, so tied weights stay tied
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if isinstance(p, DTensor):
                if id(p) not in full:
                    full[id(p)] = nn.Parameter(p.full_tensor().detach().clone(), requires_grad=p.requires_grad)
                m._parameters[name] = full[id(p)]
    for m in module.modules():
        for attr in ("_forward_pre_hooks", "_forward_hooks", "_state_dict_pre_hooks", "_state_dict_hooks",
                     "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
            hooks = getattr(m, attr, None)
            if not hooks:
                continue
            for key in [k for k, fn in hooks.items() if _is_fsdp_hook(fn)]:
                del hooks[key]
                for side in ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs",
                             "_forward_hooks_always_called"):
                    getattr(m, side, {}).pop(key, None)
        if isinstance(m, FSDPModule):
            m.__class__ = next(b for b in type(m).__bases__ if b is not FSDPModule)
        states, registry = m.__dict__.get(contract.STATE_KEY), m.__dict__.get(contract.REGISTRY_KEY)
        for k in [k for k in (states or {}) if getattr(k, "__name__", "") == "fully_shard"]:
            del states[k]
        if registry:
            registry.pop("fully_shard", None)
        for key in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            m.__dict__.pop(key, None)
        composable_state._module_state_mapping.pop(m, None)
    if is_fsdp(module) or any(isinstance(p, DTensor) for p in module.parameters()):
        raise RuntimeError("engine.strategy=fsdp: could not return the module to a plain one "
                           f"(torch {__import__('torch').__version__}); please report this.")
