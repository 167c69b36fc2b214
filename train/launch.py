"""``python -m train.launch``: torchrun, with the checks that need no rank made before any rank starts.

Takes torchrun's own arguments unchanged (``python -m train.launch --nproc_per_node 8 -m train.rotnet
--shards SET --out OUT --device cuda``). Before a rank starts it refuses, in one line, what every rank
would refuse anyway: a ``--device`` that this machine does not have, or ``--nproc_per_node gpu`` without
one. A run whose ranks fail ends with one line naming the failed ranks and their exit codes instead of the
launcher's own traceback: each rank has already printed its own one-line reason.
"""
from __future__ import annotations

import logging
import signal
import sys

import click
import torch
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run as torchrun

from train.run import resolve_device


def trainer_device(script_args: list[str]) -> str | None:
    """The value of the trainer's ``--device`` option among ``script_args`` (last one wins, as in click)."""
    found = None
    for i, arg in enumerate(script_args):
        if arg == "--device" and i + 1 < len(script_args):
            found = script_args[i + 1]
        elif arg.startswith("--device="):
            found = arg.split("=", 1)[1]
    return found


def preflight(args) -> None:
    """Refuse, before any rank starts, what every rank would refuse: a missing device, no process count."""
    device = trainer_device(args.training_script_args)
    if device is not None:
        try:
            resolve_device(device)
        except click.ClickException as e:
            raise click.ClickException(f"{e.message} (checked before starting {args.nproc_per_node} ranks of "
                                       f"{args.training_script})") from None
    n = str(args.nproc_per_node)
    if n not in ("auto", "cpu", "gpu", "xpu") and not (n.isdigit() and int(n) > 0):
        raise click.ClickException(f"--nproc_per_node {n}: give a number of processes of at least 1 (or auto, "
                                   f"cpu, gpu)")
    if args.nproc_per_node == "gpu" and not torch.cuda.is_available():
        raise click.ClickException("--nproc_per_node gpu: no CUDA device is visible here; give a number of "
                                   "processes (e.g. --nproc_per_node 2) and --device cpu")


def failed_ranks(e: ChildFailedError) -> str:
    """``rank 0 (exit 1), rank 1 (exit 1)`` from the launcher's failure record."""
    return ", ".join(f"rank {rank} (exit {f.exitcode})" for rank, f in sorted(e.failures.items()))


def main(argv: list[str] | None = None) -> int:
    """Parse torchrun's arguments, check them, run the ranks; returns the exit code."""
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        preflight(args)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    # The agent's own "failed (exitcode: 1) local_rank: 0 ..." line says what the one line below says.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        torchrun(args)
    except ChildFailedError as e:
        click.echo(f"Error: {args.training_script} failed on {failed_ranks(e)}; each rank's own message is "
                   f"above", err=True)
        return 1
    except (KeyboardInterrupt, SignalException) as e:
        sig = signal.SIGINT if isinstance(e, KeyboardInterrupt) else e.sigval
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else f"stopped by signal {sig.name}"
        click.echo(f"Error: {args.training_script} {what}; its ranks said above where their runs stand "
                   f"(resume with the same command and --resume)", err=True)
        return 128 + sig    # as a trainer exits: 130 on Ctrl-C, 143 on SIGTERM
    return 0


if __name__ == "__main__":
    sys.exit(main())
