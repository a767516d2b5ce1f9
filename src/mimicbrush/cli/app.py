"""`mimicbrush app`: the web editor (Gradio) and its API, on this machine only unless told."""

from __future__ import annotations

import argparse
import ipaddress
import signal
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
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface, "
                        "which needs --auth/--auth-file or --no-auth)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                        help="require a login for the page and the API (repeatable; the command line is visible "
                        "to other users of this machine: prefer --auth-file)")
    parser.add_argument("--auth-file", metavar="PATH",
                        help="logins, one user:password a line ('#' starts a comment line)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve a --host other than this machine without a login: anyone who can reach it can edit")
    parser.add_argument("--max-queue", type=int, default=None, metavar="N",
                        help="edits waiting at most; more are refused with 'Queue is full' (default 64)")
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
    if args.max_queue is not None and args.max_queue < 1:
        raise InputError(f"--max-queue must be at least 1, got {args.max_queue}")
    accounts = _logins(args)
    _check_port_free(args.host, args.port)  # before minutes of loading, not after
    try:
        import gradio  # noqa: F401  (only checking that it is installed)
    except ModuleNotFoundError:
        raise InputError("the app needs Gradio: pip install 'mimicbrush[app]'") from None
    from ..app import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_SIDE, QUEUE_SIZE, EditService, build_app, launch
    from ..loading import BUNDLED_MODEL_NOTICE

    if args.model is None:
        print(BUNDLED_MODEL_NOTICE, file=sys.stderr)
    service = EditService.load(args.model, device=args.device, dtype=args.dtype, offload=args.offload,
                               compiled=args.compile, max_side=args.max_side or DEFAULT_MAX_SIDE)
    demo = build_app(service, max_file_size=args.max_file_size or DEFAULT_MAX_FILE_SIZE,
                     with_examples=not args.no_examples, queue_size=args.max_queue or QUEUE_SIZE, auth=accounts)
    notice = _access_notice(args.host, accounts)
    if notice:
        print(f"notice: {notice}", file=sys.stderr)
    launch(demo, host=args.host, port=args.port, quiet=True, prevent_thread_lock=True)
    print(demo.local_url, flush=True)  # the result: where the app is
    print("serving; press Ctrl+C to stop", file=sys.stderr, flush=True)
    # a service manager stops with SIGTERM: clean up as for Ctrl+C (Gradio's cache files, the
    # results folder), which the default handler would skip
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.close()
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _logins(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The accounts from --auth and --auth-file; a host other than this machine without any is
    refused unless --no-auth says so."""
    from ..app.accounts import collect_accounts, readable_by_others

    if args.no_auth and (args.auth or args.auth_file):
        raise InputError("--no-auth contradicts --auth/--auth-file: give one or the other")
    accounts = collect_accounts(args.auth, args.auth_file)
    if not accounts and not args.no_auth and not _is_loopback(args.host):
        raise InputError(f"--host {args.host} serves the app to other machines: give a login with "
                         "--auth USER:PASSWORD or --auth-file PATH, or pass --no-auth to let anyone who can "
                         "reach this machine use it")
    if args.auth_file and readable_by_others(args.auth_file):
        print(f"notice: --auth-file {args.auth_file} can be read by other users of this machine "
              "(chmod 600 it)", file=sys.stderr)
    return accounts


def _access_notice(host: str, accounts: list[tuple[str, str]]) -> str | None:
    """One line on who can use the app, or None when it is this machine's alone."""
    login = ""
    if accounts:
        users = ", ".join(user for user, _ in accounts)
        login = f"a login for the page and the API, {len(accounts)} user{'s' if len(accounts) > 1 else ''} ({users})"
    if _is_loopback(host):
        return f"serving on {host} with {login}" if login else None
    if login:
        return f"serving on {host} with {login}: anyone who can reach this machine gets the login page"
    return f"serving on {host}: anyone who can reach this machine can use the app"


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
