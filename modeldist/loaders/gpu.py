"""CPU tensors over the store -> CUDA tensors: pin the mapping, copy asynchronously, one sync.

Pinning (``cudaHostRegister``) lets the copy engine read the node's shared pages directly, with no
bounce through pageable memory. Registered ranges are unregistered after the copies finish.
"""

from __future__ import annotations

import logging

from ..errors import ConfigError

__all__ = ["to_device"]

log = logging.getLogger(__name__)


def to_device(tensors: dict, device: str, buffers) -> dict:
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available in this process")
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ConfigError(f"unsupported device {device!r} (expected cuda or cuda:N)")
    registered = []
    cudart = torch.cuda.cudart()
    try:
        for mm in buffers:
            t = torch.frombuffer(mm, dtype=torch.uint8)
            ptr, size = t.data_ptr(), t.numel()
            # flag 0 = cudaHostRegisterDefault; failure (e.g. not allowed) only costs speed
            if int(cudart.cudaHostRegister(ptr, size, 0)) == 0:
                registered.append(ptr)
            else:
                log.debug("cudaHostRegister of %d bytes failed; copying from pageable memory", size)
        with torch.cuda.device(dev):
            stream = torch.cuda.Stream(dev)
            with torch.cuda.stream(stream):
                out = {k: v.to(dev, non_blocking=True) for k, v in tensors.items()}
            stream.synchronize()
        return out
    finally:
        for ptr in registered:
            cudart.cudaHostUnregister(ptr)
