"""The training loop: accelerate for devices, mixed precision, accumulation and DDP; periodic
atomic checkpoints, TensorBoard logs, sample edits, and an export at the end."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from .. import imaging
from ..data import build_dataset
from ..errors import ConfigError, MimicBrushError
from ..fileio import write_atomic
from ..pipeline import MimicBrushPipeline
from .averaging import EMA_FILE, WeightAverage, load_average_into
from .batches import DataFeed, DataPosition, TrainingSamples
from .checkpoint import WEIGHTS_FILE, CheckpointStore, TrainerState, load_weights, use_unwrapped_weights
from .components import COMPONENT_ROLES, build_components
from .config import OptimConfig, TrainConfig
from .export import export_trained
from .imitation import ImitationProbe, check_held_out, flatten_for_log
from .objective import DrawSettings, MimicBrushObjective, batch_to_device
from .trainable import (enable_gradient_checkpointing, freeze_unreached, probe_batch, set_trainable,
                        summarize_unreached, trainable_roles)
from .validation import load_validation_cases, render_validation_grid
from .zero import (accelerator_options, configure_deepspeed, full_precision_state_dict, launched_with_deepspeed,
                   load_full_precision, zero_stage)


class TrainingDiverged(MimicBrushError):
    """The loss became NaN or infinite; training stops before the update that would spread it."""


@dataclass
class TrainingModel:
    pipeline: MimicBrushPipeline  # every component; the sample edits and the export use it as is
    objective: MimicBrushObjective


def build_training_model(config: TrainConfig) -> TrainingModel:
    """Components from the `model:` section, in float32 on the CPU, trainable ones set."""
    components = build_components(config.model, config.data.resolution, config.seed)
    pipeline = MimicBrushPipeline(**components)  # attaches the reference attention processors
    pipeline.set_progress_bar_config(disable=True)
    parts = {role: getattr(pipeline, role) for role in COMPONENT_ROLES if getattr(pipeline, role) is not None}
    trainable = trainable_roles(config.train.trainable, "trainable" in (config.document.get("train") or {}), parts)
    set_trainable(parts, trainable)
    objective = MimicBrushObjective(pipeline, trainable, mask_loss_weight=config.train.mask_loss_weight,
                                    correspondence_weight=config.train.correspondence_weight)
    return TrainingModel(pipeline, objective)


def place_for_training(objective: MimicBrushObjective, device: torch.device, mixed_precision: str,
                       gradient_checkpointing: bool) -> None:
    """Trainable weights stay float32 (mixed precision autocasts the forward); frozen ones are
    stored in the half dtype to save memory, but for SDXL's VAE under fp16, which overflows there
    (the loss runs it in float32, outside autocast)."""
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    for role, module in objective.parts.items():
        module.to(device)
        upcast = role == "vae" and half == torch.float16 and objective.vae_in_float32
        if half is not None and role not in objective.trainable and not upcast:
            module.to(dtype=half)
    if gradient_checkpointing:
        enable_gradient_checkpointing(objective.trainable.values())


def model_fingerprint(config: TrainConfig) -> dict:
    """What a checkpoint's weights belong to; resuming or exporting with another is an error."""
    return {"model": config.document.get("model"), "trainable": list(config.train.trainable)}


def train(config: TrainConfig, resume: str | None = None) -> Path:
    """Train as configured (resuming from a checkpoint folder, or the latest with "latest") and
    return the exported model folder."""
    return Trainer(config, resume).run()


def export_checkpoint(config: TrainConfig, checkpoint: str | None) -> Path:
    """Export a checkpoint (a folder, or the latest for None/"latest") of this config's run to
    `<output_dir>/model-step-NNNNNNNN`."""
    store = CheckpointStore(config.output_dir / "checkpoints")
    path = store.resolve(checkpoint)
    if path is None:
        raise ConfigError(f"--export: no checkpoint in {store.root}")
    state = TrainerState.read(path)
    _check_fingerprint(state, config, path)
    model = build_training_model(config)
    load_weights(model.objective, path / WEIGHTS_FILE)
    if config.train.ema_decay and (path / EMA_FILE).is_file():  # the run's own exports are the average too
        load_average_into(model.objective, path / EMA_FILE)
    return export_trained(model.pipeline, config, config.output_dir / f"model-step-{state.step:08d}")


def run_copy_of_config(config: TrainConfig) -> str:
    """The config as this run used it (overrides applied), readable from the run folder: its
    relative paths keep their meaning through `relative_to`, and `output_dir` is this run's."""
    document = {
        "relative_to": str(config.base_dir),
        **{key: value for key, value in config.document.items() if key != "relative_to"},
        "output_dir": str(config.output_dir),
    }
    text = yaml.safe_dump(document, sort_keys=False)
    return f"# {config.config_path} with overrides\n{text}"


def _check_fingerprint(state: TrainerState, config: TrainConfig, path: Path) -> None:
    if state.model != model_fingerprint(config):
        raise ConfigError(f"{path} was made with a different model: section or train.trainable "
                          f"than {config.config_path}")


class Trainer:
    """One run: set up in the constructor (resuming if asked), trained by `run()`."""

    def __init__(self, config: TrainConfig, resume: str | None = None):
        from accelerate.utils import set_seed

        self.config = config
        self.store = CheckpointStore(config.output_dir / "checkpoints")
        self.accelerator = accelerator = make_accelerator(config)
        self.zero_stage = zero_stage(accelerator)  # None without DeepSpeed
        use_unwrapped_weights(accelerator)
        resume_from = self._checkpoint_to_resume(resume)
        state = TrainerState.read(resume_from) if resume_from is not None else None
        if state is not None:
            _check_fingerprint(state, config, resume_from)
            self._check_resumable(state, resume_from)
        # global RNGs serve only randomness inside components (e.g. dropout); the loss's own
        # draws come from per-sample generators
        set_seed(config.seed, device_specific=True)
        if accelerator.is_main_process:
            self.store.remove_leftovers()
            config.output_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(config.output_dir / "config.yaml", run_copy_of_config(config))

        # the data first: a wrong folder should fail before minutes of loading weights
        pairs = build_dataset(config.data, seed=config.seed)
        self.validation_cases = None
        if config.validation.every_steps and accelerator.is_main_process:
            self.validation_cases = load_validation_cases(config.validation, config.data)
        if config.imitation.data is not None:
            check_held_out(config.data, config.imitation.data)

        model = build_training_model(config)
        self.pipeline, self.objective = model.pipeline, model.objective
        self._place_on_device()
        self.imitation_probe = None
        if config.imitation.data is not None and accelerator.is_main_process:
            self.imitation_probe = ImitationProbe.from_config(config.imitation, self.objective, self._latent_shape(),
                                                  self.pipeline.clip_input_size, self.pipeline.config.depth_input_size)
        unreached = self._freeze_unreached()
        self.parameters = [p for p in self.objective.parameters() if p.requires_grad]
        optimizer = make_optimizer(config.optim, self.parameters)
        self.lr_scheduler = make_lr_scheduler(config, optimizer)
        self.model, self.optimizer = accelerator.prepare(self.objective, optimizer)  # self.model: DDP-wrapped
        accelerator.register_for_checkpointing(self.lr_scheduler)

        self.step, position = 0, DataPosition()
        if state is not None:
            accelerator.load_state(str(resume_from))
            self.step, position = state.step, DataPosition(state.epoch, state.sample_offset)
            self._say(f"resuming from {resume_from} at step {state.step}")
            if state.num_processes * state.batch_size != accelerator.num_processes * config.train.batch_size:
                self._say("note: the global micro-batch changed since that checkpoint; the data continue from "
                          "the same sample, but steps now hold a different number of samples")
        self.average = None
        if config.train.ema_decay:  # made after loading, so that a new average starts from the weights resumed
            self.average = WeightAverage(self.objective, config.train.ema_decay)
            if resume_from is not None and (resume_from / EMA_FILE).is_file():
                self.average.load(resume_from)
            elif resume_from is not None:
                self._say(f"note: {resume_from} has no {EMA_FILE}; the weight average starts from its weights")
        self.feed = DataFeed(self._training_samples(pairs), config.seed, config.train.batch_size,
                             accelerator.num_processes, accelerator.process_index, config.train.num_workers,
                             pin_memory=accelerator.device.type == "cuda", position=position)
        accelerator.init_trackers("mimicbrush")
        self._describe(unreached)

    # -----------------------------------------------------------------------------------------
    # Setup

    def _checkpoint_to_resume(self, resume: str | None) -> Path | None:
        existing = self.store.latest()
        if resume is None:
            if existing is not None:
                raise ConfigError(f"{self.config.output_dir} already holds checkpoints: pass --resume to continue "
                                  "that run, or choose another --output-dir")
            return None
        path = self.store.resolve(resume)
        if path is None:
            self._say(f"--resume: no checkpoint in {self.store.root} yet, starting from step 0")
        return path

    def _check_resumable(self, state: TrainerState, path: Path) -> None:
        """DeepSpeed's optimizer state is its own, sharded per process: only the same DeepSpeed
        setup resumes it (`--export` reads any checkpoint)."""
        def setup(stage):
            return "without DeepSpeed" if stage is None else f"under DeepSpeed ZeRO-{stage}"

        if state.deepspeed_zero_stage != self.zero_stage:
            raise ConfigError(f"{path} was saved {setup(state.deepspeed_zero_stage)} and this run is "
                              f"{setup(self.zero_stage)}: resume it as it was launched, or export it with --export")
        if self.zero_stage is not None and state.num_processes != self.accelerator.num_processes:
            raise ConfigError(f"{path} holds DeepSpeed's optimizer state sharded over {state.num_processes} processes; "
                              f"this run has {self.accelerator.num_processes}: resume it with {state.num_processes}")

    def _place_on_device(self) -> None:
        train = self.config.train
        place_for_training(self.objective, self.accelerator.device, train.mixed_precision,
                           train.gradient_checkpointing)

    def _latent_shape(self) -> tuple[int, int, int]:
        side = self.config.data.resolution // self.pipeline.vae_scale_factor
        return (self.pipeline.vae.config.latent_channels, side, side)

    def _freeze_unreached(self) -> list[str]:
        pipeline = self.pipeline
        batch = probe_batch(self.config.data.resolution, self._latent_shape(), pipeline.clip_input_size,
                            pipeline.config.depth_input_size, self.accelerator.device)
        with self.accelerator.autocast():
            return freeze_unreached(self.objective, batch)

    def _training_samples(self, pairs) -> TrainingSamples:
        pipeline, train = self.pipeline, self.config.train
        draws = DrawSettings(seed=self.config.seed, reference_drop=train.reference_drop, depth_drop=train.depth_drop,
                             num_train_timesteps=pipeline.scheduler.config.num_train_timesteps,
                             latent_shape=self._latent_shape())
        return TrainingSamples(pairs, draws, pipeline.clip_input_size, pipeline.config.depth_input_size)

    def _describe(self, unreached: list[str]) -> None:
        accelerator, train = self.accelerator, self.config.train
        global_batch = train.batch_size * train.gradient_accumulation_steps * accelerator.num_processes
        deepspeed = "" if self.zero_stage is None else f" with DeepSpeed ZeRO-{self.zero_stage}"
        self._say(f"training on {accelerator.num_processes} process(es){deepspeed}, {accelerator.device.type}, "
                  f"mixed precision {train.mixed_precision}; {global_batch} samples per step "
                  f"({train.batch_size} per process × {train.gradient_accumulation_steps} accumulated × "
                  f"{accelerator.num_processes})")
        sizes = ", ".join(
            f"{role} {sum(p.numel() for p in self.objective.parts[role].parameters() if p.requires_grad) / 1e6:.2f}M"
            for role in self.objective.trainable)
        self._say(f"trainable parameters: {sizes}")
        if "pooled_proj" in self.objective.parts and "pooled_proj" not in self.objective.trainable:
            self._say("note: pooled_proj is not in train.trainable: the SDXL pooled vector stays what it starts as "
                      "(zero from scratch: SDXL's empty-prompt vector)")
        if unreached:
            self._say(f"frozen, never reached by the loss: {summarize_unreached(unreached)}")

    def _say(self, message: str) -> None:
        if self.accelerator.is_main_process:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    # -----------------------------------------------------------------------------------------
    # The loop

    def run(self) -> Path:
        from tqdm import tqdm

        config, accelerator = self.config, self.accelerator
        max_steps = config.train.max_steps
        if self.step >= max_steps:
            self._say(f"the checkpoint is at step {self.step}, train.max_steps is {max_steps}: nothing to train")
        samples_per_step = (config.train.batch_size * config.train.gradient_accumulation_steps
                            * accelerator.num_processes)
        progress = tqdm(total=max_steps, initial=self.step, desc="training", unit="step", file=sys.stderr,
                        dynamic_ncols=True, disable=not accelerator.is_main_process)
        window_losses, window_accuracies, window_start = [], [], time.perf_counter()
        try:
            while self.step < max_steps:
                window_losses.append(self._train_step())
                if self.objective.attention_accuracy is not None:
                    window_accuracies.append(self.objective.attention_accuracy)
                self.step += 1
                lr = self.lr_scheduler.get_last_lr()[0]
                progress.update()
                progress.set_postfix(loss=f"{window_losses[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
                final = self.step == max_steps
                if self.step % config.logging.every_steps == 0 or final:
                    elapsed = time.perf_counter() - window_start
                    values = {"train/loss": float(np.mean(window_losses)), "train/lr": lr,
                              "train/samples_per_second": len(window_losses) * samples_per_step / elapsed,
                              "train/epoch": self.feed.position.epoch}
                    if window_accuracies:  # correspondence supervision: where the reference attention looks
                        values["train/attention_accuracy"] = float(np.mean(window_accuracies))
                    accelerator.log(values, step=self.step)
                    window_losses, window_accuracies, window_start = [], [], time.perf_counter()
                if self.step % config.checkpoint.every_steps == 0 or final:
                    self._save_checkpoint(progress)
                if config.validation.every_steps and self.step % config.validation.every_steps == 0:
                    self._log_sample_edits()
                every = config.imitation.every_steps
                if config.imitation.data is not None and ((every and self.step % every == 0) or final):
                    self._log_imitation(progress)
        finally:
            progress.close()
            self.objective.bank.clear()
        target = config.output_dir / "model"
        if self.zero_stage is not None:  # the master weights, not DeepSpeed's half-precision copies
            weights = full_precision_state_dict(self.objective, keep=accelerator.is_main_process)
            if accelerator.is_main_process:
                load_full_precision(self.objective, weights)
        if accelerator.is_main_process:
            with self._evaluated_weights():
                export_trained(self.pipeline, config, target)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return target

    def _train_step(self) -> float:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; the mean loss."""
        accelerator, train = self.accelerator, self.config.train
        losses = []
        for micro_step in range(train.gradient_accumulation_steps):
            batch = batch_to_device(next(self.feed), accelerator.device)
            with accelerator.accumulate(self.model):
                loss = self.model(batch)
                mean_loss = accelerator.reduce(loss.detach().clone(), reduction="mean").item()
                if not math.isfinite(mean_loss):
                    self._diverged(mean_loss, micro_step)
                accelerator.backward(loss)  # under DeepSpeed, also its clipping and optimizer step
                if accelerator.sync_gradients and train.max_grad_norm is not None and self.zero_stage is None:
                    accelerator.clip_grad_norm_(self.parameters, train.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.objective.bank.clear()
            losses.append(mean_loss)
        if not accelerator.optimizer_step_was_skipped:  # fp16 skips steps with overflowing gradients
            self.lr_scheduler.step()
            if self.average is not None:
                self.average.update()
        return float(np.mean(losses))

    def _diverged(self, value: float, micro_step: int) -> None:
        latest = self.store.latest()
        accumulation = self.config.train.gradient_accumulation_steps
        where = f" (micro-batch {micro_step + 1} of {accumulation})" if accumulation > 1 else ""
        raise TrainingDiverged(
            f"loss is {value} at step {self.step + 1}{where}; stopped before that update. "
            f"Last checkpoint: {latest if latest else 'none'}. Try a lower optim.lr, train.max_grad_norm, "
            "or train.mixed_precision bf16 instead of fp16")

    def _save_checkpoint(self, progress) -> None:
        train = self.config.train
        state = TrainerState(
            step=self.step, epoch=self.feed.position.epoch, sample_offset=self.feed.position.offset,
            num_processes=self.accelerator.num_processes, batch_size=train.batch_size,
            gradient_accumulation_steps=train.gradient_accumulation_steps, model=model_fingerprint(self.config),
            deepspeed_zero_stage=self.zero_stage,
        )
        path = self.store.save(self.accelerator, state, self.config.checkpoint.keep_last,
                               write_extra=None if self.average is None else self.average.save)
        if self.accelerator.is_main_process:
            progress.write(f"checkpoint {path}", file=sys.stderr)

    def _log_imitation(self, progress) -> None:
        """The held-out imitation metric (main process; others wait), logged to TensorBoard and
        appended to `<output_dir>/imitation.json`."""
        accelerator = self.accelerator
        if accelerator.is_main_process:
            with self._evaluated_weights():
                results = self.imitation_probe.measure(self.objective, accelerator.device)
            accelerator.log(flatten_for_log(results), step=self.step)
            path = self.config.output_dir / "imitation.json"
            history = json.loads(path.read_text()) if path.is_file() else []
            history = [entry for entry in history if entry["step"] < self.step]  # a resumed run redoes later ones
            history.append({"step": self.step, "samples": self.step * self._samples_per_step(), **results})
            write_atomic(path, json.dumps(history, indent=1))
            summary = ", ".join(f"{t}: gain {v['gain']:+.1%} win {v['win']:.0%}" for t, v in results.items())
            progress.write(f"imitation at step {self.step}: {summary}", file=sys.stderr)
        accelerator.wait_for_everyone()

    def _evaluated_weights(self):
        """The weights that are measured and exported: the moving average where there is one."""
        return contextlib.nullcontext() if self.average is None else self.average.swapped_in()

    def _samples_per_step(self) -> int:
        train = self.config.train
        return train.batch_size * train.gradient_accumulation_steps * self.accelerator.num_processes

    def _log_sample_edits(self) -> None:
        """Edits of the validation cases with the current weights (main process; others wait)."""
        accelerator, pipeline = self.accelerator, self.pipeline
        if accelerator.is_main_process:
            modules = list(self.objective.parts.values())
            modes = [module.training for module in modules]
            for module in modules:
                module.eval()
            try:
                with self._evaluated_weights():
                    grid = render_validation_grid(pipeline, self.validation_cases, self.config.validation)
            finally:
                for module, mode in zip(modules, modes, strict=True):
                    module.train(mode)
                self.objective.bank.clear()
            writer = accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_image("validation/edits", grid, self.step, dataformats="HWC")
            imaging.save_image(Image.fromarray(grid), self.config.output_dir / "samples" / f"step-{self.step:08d}.png",
                               metadata={"step": self.step}, force=True)
        accelerator.wait_for_everyone()


def make_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("training logs need tensorboard: pip install tensorboard (or mimicbrush[train])")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = launched_with_deepspeed()
    accelerator = Accelerator(
        # processes without a GPU join (over gloo) only when accelerate is told they are CPU ones
        # (DeepSpeed's are told otherwise: zero.py); one process keeps accelerate's own choice
        # (CUDA, MPS or the CPU)
        cpu=launched > 1 and not torch.cuda.is_available() and not deepspeed,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
        mixed_precision=config.train.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(config.output_dir),
                                            logging_dir=str(config.output_dir / "logs")),
        **(accelerator_options() if deepspeed else {}),
    )
    if launched != accelerator.num_processes:  # else every process would train alone, into one folder
        raise ConfigError(f"launched as {launched} processes, but accelerate runs {accelerator.num_processes}: "
                          "see docs/training.md for how to launch several processes")
    if zero_stage(accelerator) is not None:
        configure_deepspeed(accelerator, config.train)
    elif config.train.mixed_precision == "fp16" and accelerator.scaler is None and accelerator.device.type == "cpu":
        # accelerate runs fp16 on the CPU with neither autocast nor a loss scaler (plain fp32 beside the
        # frozen parts in fp16); both, as on a GPU, make a CPU run what a GPU run is, only slower
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.train.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.train.allow_tf32
    return accelerator


def make_optimizer(optim: OptimConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if optim.optimizer == "adamw8bit":
        try:
            import bitsandbytes
        except ImportError:
            raise ConfigError("optim.optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes), "
                              "or use adamw") from None
        optimizer_class = bitsandbytes.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(parameters, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, eps=optim.eps)


def make_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    """Stepped once per optimizer step (not prepared by accelerate, which would step it once
    per process)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.optim.lr_scheduler, optimizer, num_warmup_steps=config.optim.warmup_steps,
                         num_training_steps=config.train.max_steps)
