"""The device rule (mimicbrush.devices) wherever the package picks a device: `auto` is CUDA, then
Apple's MPS, then the CPU; a device that is not there, or --offload without a GPU, is one line
before any model loads; fp16 on the CPU says once that it is slow; the edit's noise stays on the
CPU. MPS and CUDA are faked where a test needs them: this machine has neither."""

from __future__ import annotations

import logging
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from mimicbrush import MimicBrushPipeline, devices, edit_options, loading
from mimicbrush.cli import build_parser, describe_library_error, main
from mimicbrush.errors import InputError


def machine(monkeypatch, cuda: int = 0, mps: bool = False) -> None:
    """Pretend this machine has `cuda` CUDA GPUs and MPS or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(devices, "mps_available", lambda: mps)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model is a failure: the checks under test come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(MimicBrushPipeline, "from_pretrained", refuse)


@pytest.fixture
def edit_files(tmp_path):
    source = tmp_path / "source.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(source)
    return ["edit", str(source), "--mask", "8,8,40,40", "--no-reference", "-o", str(tmp_path / "out.png"),
            "--seed", "0", "--steps", "1"]


# ---------------------------------------------------------------------------------------------
# The rule


@pytest.mark.parametrize("cuda, mps, expected", [(1, True, "cuda"), (0, True, "mps"), (0, False, "cpu"), (2, False, "cuda")])
def test_auto_is_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    machine(monkeypatch, cuda=cuda, mps=mps)
    assert devices.resolve_device("auto").type == expected


def test_default_dtypes_per_device():
    auto = {name: devices.resolve_dtype("auto", torch.device(name)) for name in ("cuda", "mps", "cpu")}
    assert auto == {"cuda": torch.float16, "mps": torch.float16, "cpu": torch.float32}
    assert devices.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize("name, cuda, mps, message", [
    ("mps", 0, False, "--device mps was asked for, but Apple's MPS is not available"),
    ("cuda", 0, True, "--device cuda was asked for, but no CUDA GPU is available"),
    ("cuda:2", 2, False, "this machine has 2 CUDA GPU(s): cuda:0 to cuda:1"),
    ("gpu", 1, True, "unknown device 'gpu' (use auto, cpu, cuda, cuda:N or mps)"),
    ("meta", 0, False, "device 'meta' is not supported"),
])
def test_a_device_that_is_not_there_is_one_line(monkeypatch, name, cuda, mps, message):
    machine(monkeypatch, cuda=cuda, mps=mps)
    with pytest.raises(InputError) as raised:
        devices.resolve_device(name)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_mps_is_accepted_where_it_is_there(monkeypatch):
    machine(monkeypatch, mps=True)
    assert devices.resolve_device("mps") == torch.device("mps")


# ---------------------------------------------------------------------------------------------
# Before the model loads: edit, edit --batch, the app, bench run


@pytest.mark.parametrize("extra, message", [
    (["--device", "mps"], "error: --device mps was asked for, but Apple's MPS is not available"),
    (["--offload", "model"], "error: --offload model streams weights from CPU memory to a GPU, and this run is on the CPU"),
    (["--device", "cpu", "--offload", "sequential"], "error: --offload sequential streams weights"),
])
def test_edit_refuses_before_the_model_loads(edit_files, monkeypatch, capsys, no_model_load, extra, message):
    machine(monkeypatch)
    assert main(edit_files + extra) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.count("\n") == 2  # the bundled-model notice, then the error
    assert "Traceback" not in stderr


def test_batch_refuses_before_the_model_loads(tmp_path, monkeypatch, capsys, no_model_load):
    machine(monkeypatch)
    source = tmp_path / "source.png"
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(source)
    manifest = tmp_path / "edits.jsonl"
    manifest.write_text(f'{{"source": "{source}", "box": "8,8,40,40", "reference": "{source}"}}\n')
    assert main(["edit", "--batch", str(manifest), "-o", str(tmp_path / "out"), "--device", "mps"]) == 2
    assert "error: --device mps was asked for" in capsys.readouterr().err


def test_the_app_refuses_before_the_model_loads(monkeypatch, no_model_load):
    from mimicbrush.app import EditService

    machine(monkeypatch)
    with pytest.raises(InputError, match="MPS is not available"):
        EditService.load(None, device="mps")
    with pytest.raises(InputError, match="--offload model streams weights"):
        EditService.load(None, offload="model")


def test_bench_run_scores_on_the_pipelines_device(tmp_path, monkeypatch):
    """On a Mac (faked) `auto` is MPS for the pipeline and the scoring networks alike."""
    from mimicbrush.benchmark import scoring, tracks

    machine(monkeypatch, mps=True)
    seen = {}

    class Stop(Exception):
        pass

    def scorer(*args, device):
        seen["scorers"] = device
        return types.SimpleNamespace(skipped={})

    def pipeline(*args, device, **kwargs):
        seen["pipeline"] = device
        raise Stop

    monkeypatch.setattr(tracks, "load_tracks", lambda folder: [])
    monkeypatch.setattr(scoring.CaseScorer, "load", staticmethod(scorer))
    monkeypatch.setattr(loading, "load_pipeline", pipeline)
    with pytest.raises(Stop):
        main(["bench", "run", str(tmp_path), "--model", "m", "-o", str(tmp_path / "out")])
    assert seen == {"scorers": "mps", "pipeline": "mps"}


def test_comfyui_nodes_follow_comfyuis_mps_device(monkeypatch):
    """ComfyUI on a Mac: the Load node loads on ComfyUI's device, in fp16 where ComfyUI uses it."""
    from mimicbrush.comfyui import model as comfy_model
    from tiny_models import tiny_pipeline

    management = types.ModuleType("comfy.model_management")
    management.get_torch_device = lambda: torch.device("mps")
    management.should_use_fp16 = lambda device: device.type == "mps"
    comfy = types.ModuleType("comfy")
    comfy.model_management = management
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.model_management", management)
    asked = {}

    def load_pipeline(location, device, dtype, **kwargs):
        asked.update(device=device, dtype=dtype)
        return tiny_pipeline()

    monkeypatch.setattr(comfy_model, "load_pipeline", load_pipeline)
    comfy_model.load(comfy_model.BUNDLED)
    assert asked == {"device": "mps", "dtype": "fp16"}


# ---------------------------------------------------------------------------------------------
# What the user sees


def test_fp16_on_the_cpu_is_one_true_line(recwarn):
    """diffusers warns once per fp16 module that fp16 cannot run on the CPU; it can, slowly. One
    warning of ours instead (the command line prints a warning as one `notice:` line)."""
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("diffusers").addHandler(handler)
    try:
        loading.load_pipeline(None, device="cpu", dtype="fp16")
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    notices = [str(warning.message) for warning in recwarn if warning.category is devices.SlowDtypeWarning]
    assert notices == ["fp16 on the CPU works but runs about 10–35× slower than fp32, the CPU's default "
                       "(docs/performance.md)"]
    assert not [message for message in logged if "cannot run with `cpu` device" in message]


def test_half_precision_on_a_gpu_or_bf16_says_nothing(recwarn):
    devices.notice_slow_dtype(torch.device("cuda"), torch.float16)
    devices.notice_slow_dtype(torch.device("mps"), torch.float16)
    devices.notice_slow_dtype(torch.device("cpu"), torch.bfloat16)
    assert not [warning for warning in recwarn if warning.category is devices.SlowDtypeWarning]


def test_the_edits_noise_comes_from_a_cpu_generator():
    """A seed gives the same pixels on every device because the noise is drawn on the CPU; a
    CUDA or MPS generator is refused with the remedy, before any work."""
    assert edit_options.generator(3).device.type == "cpu"
    from tiny_models import tiny_pipeline

    pipe = tiny_pipeline()
    not_cpu = types.SimpleNamespace(device=torch.device("mps"))
    with pytest.raises(InputError, match=r"pass torch.Generator\('cpu'\)"):
        pipe(source_image=np.zeros((32, 32, 3), np.uint8), mask_image="0,0,8,8", generator=not_cpu)


def test_an_operator_mps_lacks_names_the_fallback():
    error = NotImplementedError(
        "The operator 'aten::_upsample_bicubic2d_aa.out' is not currently implemented for the MPS device. If you "
        "want this op to be added in priority during the prototype phase of this feature, please comment on "
        "https://github.com/pytorch/pytorch/issues/77764. As a temporary fix, you can set the environment variable "
        "`PYTORCH_ENABLE_MPS_FALLBACK=1` to use the CPU as a fallback for this op.")
    message = describe_library_error(error, types.SimpleNamespace())
    assert message.startswith("The operator 'aten::_upsample_bicubic2d_aa.out' is not currently implemented for the "
                              "MPS device: run again with PYTORCH_ENABLE_MPS_FALLBACK=1")
    assert "--device cpu" in message and "github" not in message


def test_the_app_compiles_its_unets_when_asked(monkeypatch):
    from mimicbrush.app import EditService
    from tiny_models import tiny_pipeline

    asked = {}

    def load_pipeline(location, **kwargs):
        asked.update(kwargs)
        return tiny_pipeline()

    monkeypatch.setattr(loading, "load_pipeline", load_pipeline)
    EditService.load(None, device="cpu", compiled=True)
    assert asked["compiled"] is True
    assert build_parser().parse_args(["app", "--compile"]).compile
