"""engine.strategy=fsdp: the checks, and sharding a phase's module and its frozen teachers for the
length of the phase (torch FSDP2, see `distill.dist`)."""
from __future__ import annotations

import torch
from torch import nn

from distill.errors import ConfigError, DistillError


class ShardingMixin:
    """The FSDP half of `Engine`."""

    def _check_fsdp(self) -> None:
        from accelerate.utils import DistributedType

        acc = self.accelerator
        if acc.num_processes < 2:
            raise ConfigError("engine.strategy=fsdp shards the student and the teacher across processes, and this "
                              "run has one. Start it with `distill run RECIPE --nproc N` (N >= 2), or use "
                              "engine.strategy=ddp (the default) in a single process.")
        if acc.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            raise ConfigError(f"engine.strategy=fsdp: the processes were started as {acc.distributed_type.value} "
                              "(an accelerate config with its own FSDP/DeepSpeed/XLA setting?). Start them with "
                              "`distill run --nproc N` or plain torchrun, or leave engine.strategy at ddp.")
        if self.cfg.precision == "fp16":
            raise ConfigError("engine.strategy=fsdp does not support fp16 loss scaling here; use bf16 or fp32.")
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401
        except ImportError:
            raise ConfigError(f"engine.strategy=fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6); "
                              f"this is torch {torch.__version__}.") from None

    def _shard(self, model: nn.Module, optimizer: torch.optim.Optimizer | None):
        """engine.strategy=fsdp: shard `model` in place (each repeated block is a unit of its own, the
        model is the root unit holding the rest, so the method's forward may read any of its
        parameters; its `student` may also be called alone), point the optimiser at the sharded
        parameters, and shard every frozen Teacher the model holds."""
        from distill.dist import fsdp_callable_alone, fsdp_shard, local_numel
        from distill.teacher import Teacher

        names = {id(p): n for n, p in model.named_parameters()}
        if optimizer is not None:
            if optimizer.state:
                raise DistillError("engine.strategy=fsdp: the optimiser must be fresh (no state) when the model is prepared")
            for group in optimizer.param_groups:
                if any(id(p) not in names for p in group["params"]):
                    raise DistillError("engine.strategy=fsdp: the optimiser holds parameters that are not the "
                                       "prepared module's; FSDP can only shard the module's own parameters.")
        fsdp_shard(model)
        student = getattr(model, "student", None)
        if isinstance(student, nn.Module) and student is not model:
            self._alone_hooks = fsdp_callable_alone(model, student)
        if optimizer is not None:
            params = dict(model.named_parameters())
            for group in optimizer.param_groups:
                group["params"] = [params[names[id(p)]] for p in group["params"]]
        # a teacher whose modules are already sharded (part of the model or of another teacher, as
        # in an ensemble that includes the run's teacher) stays whole
        claimed = {id(m) for m in model.modules()}
        for m in model.modules():
            for v in list(vars(m).values()):
                if isinstance(v, Teacher) and not v.sharded:
                    mods = {id(sub) for sub in v.module.modules()}
                    if mods & claimed:
                        continue
                    claimed |= mods
                    self._teachers.append(v.shard())
        # one line in the metrics: how many parameter elements each process holds
        counts = torch.tensor([[local_numel(model)] + [local_numel(t.module) for t in self._teachers]],
                              dtype=torch.float64)
        every = self.accelerator.gather(counts.to(self.device)).cpu().long().tolist()
        self.log({"fsdp/processes": self.accelerator.num_processes,
                  "fsdp/params": sum(p.numel() for p in model.parameters()),
                  "fsdp/params_local": [row[0] for row in every],
                  "fsdp/teacher_params": [t.num_parameters() for t in self._teachers],
                  "fsdp/teacher_params_local": [row[1:] for row in every]})
        return model, optimizer

    def _unshard(self) -> None:
        """engine.strategy=fsdp: give the model and the teachers back whole (every process)."""
        from distill.dist import fsdp_release, is_fsdp

        for h in getattr(self, "_alone_hooks", []):
            h.remove()
        self._alone_hooks = []
        if self._model is not None and is_fsdp(self._model):
            fsdp_release(self._model)
        for t in self._teachers:
            t.unshard()
        self._teachers = []
