"""Library errors at the command line: out of memory (GPU and RAM), a full or read-only disk and
files a library cannot use become one line with a remedy; anything else is a bug and keeps its
traceback (docs/reliability.md)."""

from __future__ import annotations

import argparse
import errno
import types

import numpy as np
import pytest
import torch
from PIL import Image

from mimicbrush import imaging, loading
from mimicbrush.cli import describe_library_error, main
from mimicbrush.scheduling import release_scheduler
from mimicbrush.errors import InputError

CUDA_OOM = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.02 GiB is free.\nIncluding non-PyTorch memory, this process has 78.10 GiB memory in use.")


@pytest.fixture
def edit_files(tmp_path):
    source = tmp_path / "source.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(source)
    return ["edit", str(source), "--mask", "2,2,10,10", "--no-reference", "-o", str(tmp_path / "out.png"),
            "--seed", "0", "--model", str(tmp_path)]


def failing_pipeline(error: BaseException):
    """A stand-in for loading.load_pipeline whose pipeline raises `error` when it edits."""

    class Pipeline:
        unet = types.SimpleNamespace(dtype=torch.float32)
        scheduler = release_scheduler()  # `edit --scheduler` swaps it, as on the real pipeline

        def __call__(self, **inputs):
            raise error

    return lambda *args, **kwargs: Pipeline()


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError(CUDA_OOM), RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
     RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)")],
)
def test_gpu_out_of_memory_is_one_line_naming_offload(edit_files, monkeypatch, capsys, error):
    monkeypatch.setattr(loading, "load_pipeline", failing_pipeline(error))
    assert main(edit_files) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and stderr.startswith("error: out of GPU memory (")
    assert "--offload model" in stderr and "--offload sequential" in stderr and "--device cpu" in stderr
    assert "Traceback" not in stderr and "Including non-PyTorch" not in stderr  # the first line of it only


def test_out_of_memory_in_a_command_without_offload_suggests_what_it_has():
    message = describe_library_error(torch.OutOfMemoryError(CUDA_OOM), argparse.Namespace(command="train"))
    assert "--offload" not in message and "smaller batch" in message


@pytest.mark.parametrize(
    "error,expected",
    [
        (MemoryError(), "out of memory (RAM): MemoryError"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                      "allocate 1099511627776 bytes."), "out of memory (RAM): [enforce fail"),
        (OSError(errno.ENOSPC, "No space left on device", "/out/edit.png"), "no space left on the disk (/out/edit.png)"),
        (PermissionError(errno.EACCES, "Permission denied", "/out/edit.png"), "permission denied (/out/edit.png)"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x.png"), "read-only file system (/mnt/ro/x.png)"),
    ],
)
def test_memory_and_disk_errors_are_one_line(edit_files, monkeypatch, capsys, error, expected):
    monkeypatch.setattr(loading, "load_pipeline", failing_pipeline(error))
    assert main(edit_files) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(f"error: {expected}") and stderr.count("\n") == 1


def test_a_library_os_error_names_its_root_cause(edit_files, monkeypatch, capsys):
    try:
        try:
            raise ValueError("Trying to load unsupported GLOBAL posix.system")
        except ValueError as cause:
            raise OSError("Unable to load weights from checkpoint file for 'unet/model.bin'") from cause
    except OSError as error:
        chained = error
    monkeypatch.setattr(loading, "load_pipeline", failing_pipeline(chained))
    assert main(edit_files) == 2
    assert capsys.readouterr().err == ("error: Unable to load weights from checkpoint file for 'unet/model.bin' "
                                       "(ValueError: Trying to load unsupported GLOBAL posix.system)\n")


def test_a_disk_that_fills_while_writing_the_output_is_one_line(edit_files, monkeypatch, capsys):
    class Pipeline:
        unet = types.SimpleNamespace(dtype=torch.float32)
        scheduler = release_scheduler()  # `edit --scheduler` swaps it, as on the real pipeline

        def __call__(self, **inputs):
            return types.SimpleNamespace(images=[Image.new("RGB", (16, 16))])

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", kwargs.get("path", args[1]))

    monkeypatch.setattr(loading, "load_pipeline", lambda *args, **kwargs: Pipeline())
    monkeypatch.setattr(imaging, "save_image", full_disk)
    assert main(edit_files) == 2
    assert capsys.readouterr().err.startswith("error: no space left on the disk (")


def test_any_other_exception_is_a_bug_and_keeps_its_traceback(edit_files, monkeypatch):
    monkeypatch.setattr(loading, "load_pipeline", failing_pipeline(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(edit_files)


def test_debug_variable_shows_the_traceback_of_user_errors_too(edit_files, monkeypatch):
    monkeypatch.setenv("MIMICBRUSH_DEBUG", "1")
    with pytest.raises(InputError, match="outside"):
        main(edit_files[:3] + ["0,0,99,99"] + edit_files[4:])
