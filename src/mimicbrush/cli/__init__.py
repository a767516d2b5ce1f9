"""`mimicbrush` command line. Each subcommand lives in its own module with `register(subparsers)`.

Errors the user can fix are printed as one line on stderr with a non-zero exit; results go to
stdout, progress bars to stderr. Library errors with a known remedy (out of memory, a full disk)
are translated the same way; any other exception is a bug and keeps its traceback.
MIMICBRUSH_DEBUG=1 shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings

from ..errors import MimicBrushError

# subcommand name -> module (imported lazily so `mimicbrush --help` stays fast)
SUBCOMMANDS = {
    "edit": "edit",
    "demo": "demo",
    "convert": "convert",
    "train": "train",
    "data": "data",
    "bench": "bench",
    "app": "app",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimicbrush",
        description="Zero-shot image editing with reference imitation (MimicBrush).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith(__name__):
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def describe_library_error(error: Exception, args: argparse.Namespace) -> str | None:
    """One line for an error from torch or the OS that the user can act on, else None."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if is_gpu_out_of_memory(error):
        remedy = (
            "Pass --offload model to keep only the running part on the GPU (or --offload sequential: "
            "slowest, least memory)"
            if hasattr(args, "offload")
            else "Use a smaller batch or image size"
        )
        return f"out of GPU memory ({first_line}). {remedy}, close other programs using the GPU, or use --device cpu"
    if isinstance(error, NotImplementedError) and "for the MPS device" in first_line:
        # torch's own message goes on for several sentences; its first names the operator
        operator = first_line.split(". ")[0].rstrip(".")
        return (f"{operator}: run again with PYTORCH_ENABLE_MPS_FALLBACK=1 in the environment (that operator then "
                "runs on the CPU, more slowly), or with --device cpu")
    if isinstance(error, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in first_line:
        return f"out of memory (RAM): {first_line}. Close other programs or use smaller inputs"
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the disk{_naming(error)}: free some space and run it again"
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{error.strerror.lower()}{_naming(error)}"
        # diffusers, transformers and huggingface_hub report a file they cannot use as an OSError
        return first_line + _root_cause(error)
    return None


def _root_cause(error: BaseException) -> str:
    """` (Type: first line)` of the innermost exception `error` was raised from, if any."""
    root = error
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    if root is error:
        return ""
    return f" ({type(root).__name__}: {(str(root).strip().splitlines() or [''])[0]})"


def is_gpu_out_of_memory(error: Exception) -> bool:
    """torch.OutOfMemoryError (CUDA, XPU), or a RuntimeError that means the same on another back end."""
    torch = sys.modules.get("torch")  # an error from torch means torch is loaded; never import it here
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        marker in str(error)
        for marker in ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "MPS backend out of memory",
                       "HIP out of memory")
    )


def _naming(error: OSError) -> str:
    return f" ({error.filename})" if error.filename else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # notices (a resized mask, a dropped alpha) read as one line, only while a command runs
    format_warning = warnings.formatwarning
    warnings.formatwarning = lambda message, *rest, **kwargs: f"notice: {message}\n"
    try:
        return int(args.func(args) or 0)
    except MimicBrushError as error:
        if os.environ.get("MIMICBRUSH_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = describe_library_error(error, args)
        if message is None or os.environ.get("MIMICBRUSH_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = format_warning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
