"""What the applications share: the distributed set-up, whole-file writes, user errors.

Nothing in the library imports this module (or anything else under ``dali_kmix.apps``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path

__all__ = ["Dist", "setup_distributed", "teardown_distributed", "atomic_write", "remove_stale_temporaries",
           "UsageError", "check_device", "require_gpu", "int_at_least", "check_at_least"]


class UsageError(ValueError):
    """A mistake in what the user asked for (a missing folder, a bad value): ``kmix`` prints one line."""


def check_at_least(flag: str, value, minimum: int = 1):
    """``value`` if it is None (an option left unset) or >= ``minimum``, else a UsageError naming ``flag`` and the
    value: the applications check their options with it before any work."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")
    return value


def int_at_least(minimum: int, even_because: str | None = None):
    """An argparse ``type``: an integer >= ``minimum`` (and even, where ``even_because`` says why it must be), else
    argparse's error for the argument, naming the value."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        if even_because is not None and value % 2:
            raise argparse.ArgumentTypeError(f"must be even ({even_because}), got {text!r}")
        return value
    return parse


@dataclasses.dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: object = None
    gpu: bool = False
    threads: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def default_resize(crop: int, val_resize=None) -> int:
    """The shorter side validation resizes to before its centre crop: ``val_resize``, else
    ``max(crop, round(crop * 256 / 224))`` (256 for a 224 crop). ``kmix train`` validates and ``kmix subsample``
    scores with it, so the scores see the view the model was evaluated on."""
    return val_resize or max(crop, round(crop * 256 / 224))


def check_device(device) -> str:
    """An application's ``device`` (``--device``): "auto", "cpu" or "gpu"."""
    if device not in ("auto", "cpu", "gpu"):
        raise UsageError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    return device


def require_gpu():
    """UsageError unless the CUDA driver sees a device (DALI's GPU pipelines need no CuPy to run)."""
    from ..backends import cuda_device_count

    if not cuda_device_count():
        raise UsageError("device='gpu' (--device gpu) but no CUDA device is available")


def setup_distributed(device: str = "auto", threads: int | None = None) -> Dist:
    """Read torchrun's environment, pick the device, set torch's threads and join the process group.

    ``device``: "auto" (CUDA when torch sees it), "cpu" or "gpu". ``threads``: CPU threads per
    process (default: the cores shared out over the local processes). The group uses nccl on
    GPUs and gloo on the CPU.
    """
    import torch
    import torch.distributed as dist

    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpu = device == "gpu" or (device == "auto" and torch.cuda.is_available())
    if gpu and not torch.cuda.is_available():
        raise UsageError("device='gpu' but torch sees no CUDA device")
    torch_device = torch.device(f"cuda:{local_rank}") if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(torch_device)
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if gpu else "gloo", init_method="env://")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=torch_device, gpu=gpu, threads=threads)


def teardown_distributed(d: Dist):
    """Wait for every rank, then leave the process group (nothing without torchrun)."""
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.{pid}.tmp")


def atomic_write(path, data: bytes | str) -> Path:
    """Write a whole file or nothing: a temporary file beside it (``.NAME.PID.tmp``), then a rename
    (parents are made). A failed write removes its temporary file; one left by a killed process is
    removed by :func:`remove_stale_temporaries`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, os.getpid())
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder, name_pattern: str) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` left in ``folder`` when its process was killed.

    Only files named ``.NAME.PID.tmp`` whose ``NAME`` matches the regular expression
    ``name_pattern`` whole, and whose ``PID`` is not a live process on this machine, are removed
    (a live process may be writing its file right now). Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"\.(?:{name_pattern})\.(\d+)\.tmp")
    removed = []
    for p in sorted(folder.iterdir()):
        m = pattern.fullmatch(p.name)
        if m and p.is_file() and not p.is_symlink() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
