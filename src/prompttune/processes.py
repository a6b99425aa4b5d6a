"""Several processes: `prompttune train` under `accelerate launch` (data parallel).

Launched as N processes, every process reads the same data, builds the same model from the same
seed and trains on its share of each batch (`training.batch_share`); the gradients are averaged
(PyTorch DDP), so every process holds the same weights after each step. `train.batch_size` is the
global batch: the same config trains the same weights on one process or on N.

Only the main process writes. It holds the output folder (`outputs.claim_output`, whose lock one
process takes), and writes the checkpoints, the artifact, `eval.json`, the plot and the tracker logs;
it alone evaluates on dev and sends the numbers to the others, so every process picks the same best
epoch and stops at the same one. The others wait for it (`wait_for_everyone`) and never write.

A plain `prompttune train` is one process: nothing here touches accelerate's global state then, so
`training.train` sets it up as the run asks. Under a launch, each process's device is the launcher's
(one GPU per process, or the CPU with ACCELERATE_USE_CPU=1), set when `process_state` first runs.

A process that fails ends its run with an error, and the launcher (torchrun, which `accelerate
launch` uses for several processes on one machine) then stops the others at once; launched some other
way, the others wait in their next collective call until the process group's timeout (PyTorch's default:
10 minutes on GPUs, 30 on CPUs) before they fail too.
"""

from __future__ import annotations

import os

from .errors import ConfigError, LaunchError

SHARDED = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed ZeRO stage 3"}
"""Launch modes that shard the parameters themselves, which prompttune's loop does not gather yet."""


def launched() -> bool:
    """Whether this process is one of several started by a launcher (`WORLD_SIZE` > 1, as torchrun and
    `accelerate launch` set it)."""
    return process_count() > 1


def process_count() -> int:
    """How many processes the launch has (`WORLD_SIZE`; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_mixed_precision(configured: str) -> str:
    """The mixed precision a run trains in: `train.mixed_precision` (`configured`), or, where that is
    "no", what `accelerate launch` asks for (its --mixed_precision flag or config file's key, which it
    passes as ACCELERATE_MIXED_PRECISION); the artifact records the result.

    Raises `ConfigError` when both ask for a precision and they differ.

    Example:
        >>> os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"; launch_mixed_precision("no")
        'bf16'
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no") if launched() else "no"
    if launcher in ("no", configured):
        return configured
    if configured == "no":
        return launcher
    raise ConfigError(f"accelerate launch asks for mixed precision {launcher} (its --mixed_precision or config file) and "
                      f"train.mixed_precision for {configured}: make them agree, or launch with --mixed_precision no")


def process_state():
    """accelerate's `PartialState` of the launched process group (it joins the group the first time);
    None in a plain single-process run.

    Raises `ConfigError` if the launcher started several processes but accelerate set up no process
    group for them (on a machine without GPUs: a launch without ACCELERATE_USE_CPU=1).
    """
    if not launched():
        return None
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # As accelerate's own AcceleratorState decides it: ACCELERATE_USE_CPU makes the processes CPU ones.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    if state.num_processes < 2:
        raise ConfigError(f"launched as {os.environ['WORLD_SIZE']} processes, but accelerate found no devices to run "
                          "them on and set up no process group; on CPUs launch with ACCELERATE_USE_CPU=1 "
                          "(see the README: several processes)")
    return state


def is_main_process() -> bool:
    """Whether this process writes the run's files: the only process of a plain run, else rank 0."""
    state = process_state()
    return state is None or state.is_main_process


def wait_for_everyone() -> None:
    """Block until every process of the launch has come here (nothing in a plain run).

    Raises `LaunchError` when another process ended instead (with its own error: the launcher shows it).
    """
    state = process_state()
    if state is None:
        return
    try:
        state.wait_for_everyone()
    except RuntimeError:  # torch's DistBackendError: "Connection closed by peer" from the process that ended
        raise LaunchError(f"process {state.process_index} of {state.num_processes}: another process of the launch "
                          "stopped (its error is above)") from None


def check_launch(state, checkpoint: bool) -> None:
    """Refuse launch modes the training loop cannot serve, before it trains: those that shard the
    parameters (FSDP, DeepSpeed ZeRO-3: the loop reads and saves whole parameters on the main process),
    and resume checkpoints (`checkpoint`: the run writes or resumes one) under DeepSpeed, whose optimizer
    state is not the one a checkpoint stores. `state` is the run's `accelerator.state`.

    Raises `ConfigError` naming the mode and what to use instead.
    """
    kind = state.distributed_type.name
    if kind == "DEEPSPEED" and state.deepspeed_plugin.zero_stage != 3:
        if checkpoint:
            raise ConfigError("resume checkpoints do not work under DeepSpeed (its optimizer state is sharded across the "
                              "processes, not what a checkpoint stores): set train.checkpoint: false, and do not --resume")
    elif kind in SHARDED:
        raise ConfigError(f"accelerate launch with {SHARDED[kind]} shards the parameters, which prompttune train does not "
                          "gather yet; use plain data parallel (configs/accelerate/ddp_2gpu.yaml) or DeepSpeed ZeRO "
                          "stage 2 (configs/accelerate/deepspeed_zero2.yaml)")
