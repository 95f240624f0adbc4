"""DDP process-group life cycle for the trainer: a start and an end that cannot deadlock.

Why the end needs care (gloo on CPU): ``~ProcessGroupGloo`` joins its worker threads, and a
worker thread that has just finished a collective frees that collective's tensors; when Python
had already dropped those tensors, freeing them takes the GIL. If the thread that destroys the
group holds the GIL, the two wait for each other forever; during interpreter shutdown the worker
cannot take the GIL at all and the process aborts. Both happened when the group's last owner was
the DDP reducer (freed with the trainer, GIL held) or a module-level function default (freed at
interpreter shutdown). So the order here is fixed:

1. every rank leaves its last collective (``dist.barrier``);
2. the caller drops the DDP wrapper, so its reducer lets go of the group while the group is
   still registered (no join happens then);
3. ``dist.destroy_process_group`` drops the last reference; the ``ProcessGroup`` binding
   releases the GIL in its destructor, so the join completes and the worker threads are gone
   before the interpreter shuts down.

For step 3 to hold the last reference, nothing else may keep the group alive: torch modules that
DDP imports lazily (``torch._dynamo`` pulls in ``torch.distributed.nn.functional`` and others)
bind ``group.WORLD`` as a default argument when they are first imported, which would keep the
group alive until interpreter shutdown. :func:`init_group` imports them before the group exists.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist


def init_group(device: torch.device) -> bool:
    """Join the torchrun group (nccl on CUDA, else gloo) unless one exists; True if this call made it."""
    if dist.is_initialized():
        return False
    # Imported here, before the group exists, so that their ``group=group.WORLD`` defaults are None
    # (see the module docstring); DDP would import them on construction anyway.
    import torch._dynamo  # noqa: F401
    import torch.distributed.nn  # noqa: F401

    die_with_launcher()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def close_group(release_wrapper: Callable[[], None], owns_group: bool) -> None:
    """The end of a DDP run, in the order of the module docstring.

    Args:
        release_wrapper: drops the caller's last reference to its DDP wrapper (step 2).
        owns_group: destroy the group (the caller made it with :func:`init_group`).
    """
    dist.barrier()  # step 1; waits with the GIL released
    release_wrapper()
    gc.collect()  # a wrapper in a reference cycle must be gone too
    if owns_group:
        dist.destroy_process_group()


def die_with_launcher() -> None:
    """Under torchrun on Linux, have the kernel kill this worker when the launcher dies.

    torchrun starts each worker in a session of its own, so a launcher killed by a timeout would
    otherwise leave its workers running as orphans (a hung worker would stay forever).
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # not fatal: the launcher's own clean-up still applies
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)
