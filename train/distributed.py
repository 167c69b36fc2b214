"""What contrastive and self-distillation methods need from the process group: gathered embeddings that
keep their gradients, and BatchNorm statistics over the global batch.

``gather`` is solo-learn's ``gather`` (an all-gather whose backward returns each rank its own slice of the
summed gradient): SimCLR's negatives come from every rank. ``sync_batchnorm`` converts every BatchNorm
to statistics over all ranks, as DINO and SimCLR do under DDP: torch's ``SyncBatchNorm`` on CUDA, and on
the CPU (gloo) ``GlobalBatchNorm`` here, which torch's does not support. Without a process group both are
the identity.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn import functional as dist_fn


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0, in rank order; gradients flow back to each rank's own."""
    if not enabled():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the batch over all ranks (sums all-reduced with
    autograd), with the running statistics torch's SyncBatchNorm keeps; in eval mode, plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and enabled()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        local = torch.cat([x.float().sum(dims), (x.float() ** 2).sum(dims), count])
        total = dist_fn.all_reduce(local)
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean ** 2
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (x.float() - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` with global-batch statistics under DDP (unchanged without it)."""
    if not enabled():
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        out.load_state_dict(module.state_dict())
        return out
    for name, child in module.named_children():
        module.add_module(name, _convert(child))
    return module
