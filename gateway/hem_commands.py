"""``gateway hem-user add`` and ``gateway audit verify`` (registered by ``gateway.cli``),
and the HEM dev user that ``gateway tokens init`` provisions."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from gateway.config import Config, load_config
from gateway.errors import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1


def _eid(config: Config, override: str | None) -> str:
    from gateway.core.hem.users import load_users_file

    if override:
        return override
    hem = config.hem
    if hem is None:
        raise ConfigError("hem: the config has no [hem] section")
    if hem.eid:
        return hem.eid
    if hem.users_file is not None and hem.users_file.exists():
        eid = load_users_file(hem.users_file).eid
        if eid:
            return eid
    raise ConfigError("hem.eid: not set (nor in hem.users_file); the passphrase key depends on it")


def _passphrase(args: argparse.Namespace) -> str:
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise ConfigError(f"--passphrase-env: environment variable {args.passphrase_env} is not set or empty")
        return value
    if not sys.stdin.isatty():
        line = sys.stdin.readline().rstrip("\n")
        if not line:
            raise ConfigError("no passphrase on standard input")
        return line
    first = getpass.getpass("passphrase: ")
    if not first or first != getpass.getpass("again: "):
        raise ConfigError("the passphrases are empty or differ")
    return first


def cmd_hem_user_add(args: argparse.Namespace) -> int:
    """Print (or, with --write, store) the config entry of a user: their public key, never the passphrase."""
    from gateway.core.hem.users import HemUser, add_user_to_file, public_key_for, user_entry_toml

    config = load_config(args.config)
    eid = _eid(config, args.eid)
    user = HemUser(args.name, public_key_for(_passphrase(args), eid), args.role)
    if args.write:
        assert config.hem is not None
        if config.hem.users_file is None:
            raise ConfigError("hem.users_file: not set; --write stores the user there")
        add_user_to_file(config.hem.users_file, user, eid if config.hem.eid is None else None)
        print(f"user {user.name!r} ({user.role}) written to {config.hem.users_file}")
    else:
        print(f"# HEM user for eid {eid}; add to the [hem] section of {config.path}")
        print(user_entry_toml(user), end="")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit log's hash chain and MACs with the key in the token; name the first bad record."""
    from gateway.core.audit import BadRecord, verify_with_token
    from gateway.http.audit import audit_token_name
    from gateway.token import Token

    config = load_config(args.config)
    directory = config.audit.directory if config.audit is not None else config.state_dir / "audit"
    name = audit_token_name(config, config.token_names)
    token = Token(config.token(name).settings())
    try:
        result = verify_with_token(directory, token)
    finally:
        token.close()
    if isinstance(result, BadRecord):
        print(f"audit log {directory}: FAILED at {result}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"audit log {directory}: ok, {result.records} records in {result.segments} segment(s); "
          f"last seq {result.last_seq}, last MAC {result.last_mac or '-'}")
    return EXIT_OK


def provision_dev_user(config: Config) -> str | None:
    """For ``gateway tokens init``: the ``[hem] dev_user`` in ``hem.users_file``."""
    from gateway.core.hem.users import provision_dev_user as provision

    hem = config.hem
    if hem is None or hem.dev_user is None or hem.users_file is None:
        return None
    message, _ = provision(hem.users_file, hem.dev_user, hem.eid)
    return f"hem: {message}"


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``hem-user add`` and ``audit verify`` on the CLI's subparsers."""
    hem_user = commands.add_parser("hem-user", help="HEM users", description="HEM user commands.")
    hem_sub = hem_user.add_subparsers(title="commands", dest="hem_user_command", required=True, metavar="COMMAND")
    add = hem_sub.add_parser(
        "add", parents=[common], help="turn a passphrase into a HEM user entry",
        description="Derive the user's X25519 public key as HEM clients do (PBKDF2-HMAC-SHA256 of the "
                    "passphrase, salt = the deployment's eid, 600000 iterations) and print the [[hem.users]] "
                    "entry, or store it in hem.users_file with --write. The passphrase is read from "
                    "--passphrase-env, else standard input, else a prompt; it is never stored.",
    )
    add.add_argument("name", help="the user's name (for the audit trail)")
    add.add_argument("--role", choices=["U", "M"], default="U", help="U user (default) or M master")
    add.add_argument("--passphrase-env", metavar="VAR", help="read the passphrase from this environment variable")
    add.add_argument("--eid", help="the deployment eid (default: hem.eid, else the users file's)")
    add.add_argument("--write", action="store_true", help="store the entry in hem.users_file instead of printing it")
    add.set_defaults(handler=cmd_hem_user_add)

    audit = commands.add_parser("audit", help="the audit log", description="Audit log commands.")
    audit_sub = audit.add_subparsers(title="commands", dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_sub.add_parser(
        "verify", parents=[common], help="check the audit log's hash chain and MACs",
        description="Recompute every record's chained HMAC with the audit key in the token. Prints a summary "
                    "(keep the last seq and MAC elsewhere: removing records from the end shows only against "
                    "such a copy); exit code 1 and the first bad record when the chain is broken.",
    )
    verify.set_defaults(handler=cmd_audit_verify)

