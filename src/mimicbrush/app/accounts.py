"""The app's logins: `--auth USER:PASSWORD` and `--auth-file PATH`, read into Gradio's `auth` list.

Passwords never appear in a message: an error names the option or the file and line instead, so
a mistyped file can be fixed from the message without it ending up in a terminal's scrollback.
No Gradio here (the command line checks the logins before it loads anything).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InputError


def parse_account(text: str, where: str) -> tuple[str, str]:
    """(user, password) from "user:password" (the password may hold ':'); `where` says where it
    came from, for the error. Surrounding whitespace is not part of either."""
    user, colon, password = text.partition(":")
    user, password = user.strip(), password.strip()
    if not colon:
        raise InputError(f"{where} is not user:password (no ':' in it)")
    if not user:
        raise InputError(f"{where} has an empty user name (user:password)")
    if not password:
        raise InputError(f"{where} has an empty password for user '{user}'")
    return user, password


def read_auth_file(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """[(user, password, where)] from a file of `user:password` lines; blank lines and lines
    starting with '#' are skipped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"--auth-file {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"--auth-file {path} is a folder, not a file of user:password lines") from None
    except OSError as error:
        raise InputError(f"--auth-file {path}: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8-sig")  # a BOM (Windows editors) is not part of the first user name
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"--auth-file {path} line {line} is not UTF-8 text") from None
    accounts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"--auth-file {path} line {number}"
        accounts.append((*parse_account(line, where), where))
    if not accounts:
        raise InputError(f"--auth-file {path} holds no user:password line")
    return accounts


def collect_accounts(auth: list[str] | None, auth_file: str | os.PathLike | None) -> list[tuple[str, str]]:
    """The logins from the command line's --auth values and --auth-file, in that file's order
    then the options'; a user name given twice is refused (which password would win?)."""
    entries = list(read_auth_file(auth_file)) if auth_file is not None else []
    for index, text in enumerate(auth or [], 1):
        where = "--auth" if len(auth) == 1 else f"--auth #{index}"
        entries.append((*parse_account(text, where), where))
    first_seen: dict[str, str] = {}
    for user, _, where in entries:
        if user in first_seen:
            raise InputError(f"user '{user}' is given twice ({first_seen[user]} and {where}): give each user once")
        first_seen[user] = where
    return [(user, password) for user, password, _ in entries]


def readable_by_others(path: str | os.PathLike) -> bool:
    """Whether users other than the file's owner may read it (group or world read permission)."""
    return bool(Path(path).stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
