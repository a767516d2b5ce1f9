"""DeepSpeed ZeRO-2 against DDP: the same run, the same seed, launched both ways.

    python benchmarks/deepspeed_vs_ddp.py [--steps 40] [--precisions no,bf16] [--optimizer adamw]
        [-o report.json] [--markdown table.md]

Trains configs/train-tiny-xl.yaml (data from ../shared/data) as 2 CPU processes (gloo; DeepSpeed
on its CPU accelerator), once with plain DDP (`torch.distributed.run`) and once under
configs/accelerate/ds-zero2.yaml (`accelerate launch`, 2 processes instead of its 8); the
ZeRO-2 run is stopped at half the steps and resumed, as a preempted job would be. For each
`train.mixed_precision` it reports both loss curves (TensorBoard's train/loss, every step) and
how far the exported weights are apart. DDP's bf16 is autocast over float32 weights; ZeRO-2's is
DeepSpeed's (bf16 weights, float32 master weights in the optimizer, no autocast), so in bf16 the
two differ by more than rounding. `--optimizer adamw8bit` runs bitsandbytes' 8-bit AdamW both
ways (under ZeRO-2 as DeepSpeed's client optimizer, on each process's flat shard). Needs
`pip install deepspeed` (and bitsandbytes for adamw8bit) in the Python that runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY_XL = ROOT / "configs" / "train-tiny-xl.yaml"
ZERO2 = ROOT / "configs" / "accelerate" / "ds-zero2.yaml"
COMPONENTS = ("unet", "reference_unet", "image_proj", "pooled_proj", "depth_guider")


def environment() -> dict[str, str]:
    """One intra-op thread per process (the CPU is shared), no inherited launch settings."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    for name in [name for name in environment if name.startswith("ACCELERATE_")]:
        del environment[name]
    return environment


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_ddp(config: Path, overrides: list[str], processes: int = 2, timeout: float = 900):
    """`mimicbrush train` as plain DDP processes (gloo without a GPU)."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
         "-m", "mimicbrush", "train", str(config), *overrides],
        env=environment(), capture_output=True, text=True, timeout=timeout)


def launch_zero2(config: Path, overrides: list[str], processes: int = 2, timeout: float = 900):
    """`mimicbrush train` under the ZeRO-2 accelerate file, with `processes` processes."""
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO2),
         "--num_processes", str(processes), "--main_process_port", str(free_port()),
         "-m", "mimicbrush", "train", str(config), *overrides],
        env=environment(), capture_output=True, text=True, timeout=timeout)


def check(completed: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return completed


def loss_curve(run_dir: Path) -> dict[int, float]:
    """train/loss per logged step, over every event file of the run (a resume adds one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs" / "mimicbrush"))
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


def exported_weights(run_dir: Path, component: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next((run_dir / "model" / component).glob("*.safetensors"))))


def weight_gap(first: Path, second: Path) -> dict[str, float]:
    """Per component: the largest difference between the two exports' weights, relative to the
    largest weight of the first."""
    gaps = {}
    for component in COMPONENTS:
        one, two = exported_weights(first, component), exported_weights(second, component)
        gap = max((one[key].float() - two[key].float()).abs().max().item() for key in one)
        scale = max(one[key].float().abs().max().item() for key in one)
        gaps[component] = gap / scale if scale else gap
    return gaps


def run_pair(out_dir: Path, steps: int, precision: str, extra: list[str] | None = None,
             optimizer: str = "adamw") -> dict:
    """DDP for `steps`, then ZeRO-2 for half of them and resumed to the end; both curves."""
    common = [f"train.mixed_precision='{precision}'", f"train.max_steps={steps}", "logging.every_steps=1",
              f"checkpoint.every_steps={max(1, steps // 2)}", "validation.every_steps=0",
              f"optim.optimizer={optimizer}", *(extra or [])]
    label = precision if optimizer == "adamw" else f"{precision}-{optimizer}"
    ddp_dir, zero_dir = out_dir / f"ddp-{label}", out_dir / f"zero2-{label}"
    check(launch_ddp(TINY_XL, [*common, f"output_dir={ddp_dir}"]), "DDP")
    first = check(launch_zero2(TINY_XL, [*common, f"output_dir={zero_dir}", f"train.max_steps={max(1, steps // 2)}"]),
                  "ZeRO-2")
    resumed = check(launch_zero2(TINY_XL, [*common, f"output_dir={zero_dir}", "--resume"]), "ZeRO-2 resume")
    ddp, zero = loss_curve(ddp_dir), loss_curve(zero_dir)
    relative = [abs(zero[step] - ddp[step]) / abs(ddp[step]) for step in sorted(ddp)]
    return {
        "precision": precision,
        "optimizer": optimizer,
        "steps": steps,
        "ddp_loss": [ddp[step] for step in sorted(ddp)],
        "zero2_loss": [zero[step] for step in sorted(zero)],
        "loss_relative_difference": {"max": max(relative), "mean": float(np.mean(relative))},
        "weight_gap_relative_to_largest_weight": weight_gap(ddp_dir, zero_dir),
        "zero2_said": [line for line in (first.stderr + resumed.stderr).splitlines()
                       if line.startswith(("training on", "resuming from"))],
    }


def markdown(report: dict) -> str:
    lines = ["| mixed precision | optimizer | steps | loss, DDP (first → last) | loss, ZeRO-2 (first → last) "
             "| loss gap (relative), max / mean | weight gap: U-Net; largest (component) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for pair in report["runs"]:
        ddp, zero, gap = pair["ddp_loss"], pair["zero2_loss"], pair["loss_relative_difference"]
        weights = pair["weight_gap_relative_to_largest_weight"]
        largest = max(weights, key=weights.get)
        lines.append(f"| {pair['precision']} | {pair.get('optimizer', 'adamw')} | {pair['steps']} | {ddp[0]:.4f} → {ddp[-1]:.4f} | "
                     f"{zero[0]:.4f} → {zero[-1]:.4f} | {gap['max']:.1e} / {gap['mean']:.1e} | "
                     f"{weights['unet']:.1e}; {weights[largest]:.1e} ({largest}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--precisions", default="no,bf16", help="train.mixed_precision values, comma-separated")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "adamw8bit"), help="optim.optimizer of both")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the runs go (default: a temp folder)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the table here")
    parser.add_argument("--from-json", type=Path, default=None, help="no runs: the table of an earlier -o report")
    args = parser.parse_args(argv)
    if args.from_json:
        (args.markdown or Path("/dev/stdout")).write_text(markdown(json.loads(args.from_json.read_text())))
        return 0
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="deepspeed-vs-ddp-"))
    report = {"config": str(TINY_XL.relative_to(ROOT)), "accelerate_file": str(ZERO2.relative_to(ROOT)),
              "processes": 2, "device": "cpu (gloo)", "runs": []}
    for precision in args.precisions.split(","):
        report["runs"].append(run_pair(work, args.steps, precision, optimizer=args.optimizer))
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
