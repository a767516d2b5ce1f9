"""`mimicbrush app`: the web editor (Gradio) and its API, on this machine only unless told."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
import time

from ..errors import InputError
from . import options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "app",
        help="the web editor: brush, reference, live progress (and an API for gradio_client)",
        description="Serve MimicBrush's web editor and its API (needs the app extra: pip install 'mimicbrush[app]'). "
        "It listens on 127.0.0.1 only unless --host says otherwise.",
    )
    parser.add_argument("--model", help="release-layout folder, mimicbrush folder, or hub id "
                        "(default: the bundled demo model)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    options.add_device_arguments(parser)
    parser.add_argument("--offload", default="none", choices=["none", "model", "sequential"],
                        help="keep weights in CPU memory and stream them to the GPU (lower peak memory)")
    parser.add_argument("--compile", action="store_true",
                        help="compile the U-Nets (CUDA graphs on GPU; falls back to eager if it fails): the first edit "
                        "compiles, later edits with the same settings reuse it")
    parser.add_argument("--max-side", type=int, default=None, metavar="PX",
                        help="longest image side accepted, in pixels (default 4096)")
    parser.add_argument("--max-file-size", default=None, metavar="SIZE",
                        help="largest upload, e.g. 25mb (default 25mb)")
    parser.add_argument("--no-examples", action="store_true", help="do not show the bundled examples")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be from 1 to 65535, got {args.port}")
    if args.max_side is not None and args.max_side < 64:
        raise InputError(f"--max-side must be at least 64, got {args.max_side}")
    _check_port_free(args.host, args.port)  # before minutes of loading, not after
    try:
        import gradio  # noqa: F401  (only checking that it is installed)
    except ModuleNotFoundError:
        raise InputError("the app needs Gradio: pip install 'mimicbrush[app]'") from None
    from ..app import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_SIDE, EditService, build_app, launch
    from ..loading import BUNDLED_MODEL_NOTICE

    if args.model is None:
        print(BUNDLED_MODEL_NOTICE, file=sys.stderr)
    service = EditService.load(args.model, device=args.device, dtype=args.dtype, offload=args.offload,
                               compiled=args.compile, max_side=args.max_side or DEFAULT_MAX_SIDE)
    demo = build_app(service, max_file_size=args.max_file_size or DEFAULT_MAX_FILE_SIZE,
                     with_examples=not args.no_examples)
    if not _is_loopback(args.host):
        print(f"notice: serving on {args.host}: anyone who can reach this machine can use the app", file=sys.stderr)
    launch(demo, host=args.host, port=args.port, quiet=True, prevent_thread_lock=True)
    print(demo.local_url, flush=True)  # the result: where the app is
    print("serving; press Ctrl+C to stop", file=sys.stderr, flush=True)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        demo.close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind((host, port))
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port} ({error.strerror or error}): "
                         "pass --port with a free port, or --host with an address of this machine") from None
