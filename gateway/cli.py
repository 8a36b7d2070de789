"""The ``gateway`` command: serve, provision dev tokens, show token capabilities.

Exit codes: 0 success, 1 failure, 2 usage or configuration error.  Expected
errors print one line to stderr, no traceback (``--debug`` adds it).
``gateway.token`` and the HTTP layer are imported inside the commands, so
``gateway --help`` works even where the token adapter cannot load.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Final

from gateway import __version__
from gateway.config import Config, load_config
from gateway.errors import ConfigError, GatewayError

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130  # shell convention for SIGINT
CONFIG_ENV: Final = "GATEWAY_CONFIG"
DEFAULT_CONFIG: Final = "config/dev.toml"

Handler = Callable[[argparse.Namespace], int]


def _default_config() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# --------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP server until interrupted."""
    config = _load(args)
    from gateway.http.app import run_server  # lazy: pulls in aiohttp and the adapter

    run_server(config)
    return EXIT_OK


def cmd_tokens_init(args: argparse.Namespace) -> int:
    """Create every token with a [tokens.provision] table, plus its PIN file."""
    from gateway.provision import provision_tokens

    config = _load(args)
    results = provision_tokens(config)
    if not results:
        print("no token has a [tokens.provision] table; nothing to do")
    for r in results:
        what = "SoftHSM2 token" if r.kind == "softhsm2" else "NSS database"
        state = "created" if r.created else "already present"
        print(f"{r.name}: {what} {state} in {r.directory}")
    if config.vault.dev_issuer_key is not None:
        from gateway.core.issuers import ensure_dev_issuer_key

        made = ensure_dev_issuer_key(config.vault.dev_issuer_key)
        print(f"vault: dev issuer key {'created' if made else 'kept'} at {config.vault.dev_issuer_key}")
    return EXIT_OK


def cmd_jwt_issue(args: argparse.Namespace) -> int:
    """Print a dev JWT signed with vault.dev_issuer_key."""
    import json

    from gateway.core.issuers import issue_token

    config = _load(args)
    if config.vault.dev_issuer_key is None:
        raise ConfigError("vault.dev_issuer_key: missing; `gateway jwt issue` signs with this key")
    try:
        claims = json.loads(args.claims) if args.claims else {}
    except ValueError as exc:
        raise ConfigError(f"--claims: not valid JSON ({exc})") from None
    if not isinstance(claims, dict):
        raise ConfigError("--claims: expected a JSON object")
    claims["sub"] = args.sub
    if args.scope is not None:
        claims["scope"] = args.scope
    print(issue_token(config.vault.dev_issuer_key, claims, lifetime=args.lifetime, issuers=config.vault.issuers))
    return EXIT_OK


def format_table(rows: Sequence[tuple[str, str]], header: tuple[str, str] = ("feature", "value")) -> str:
    """Two left-aligned columns with a header rule, indented by two spaces."""
    width = max(len(header[0]), *(len(feature) for feature, _ in rows)) if rows else len(header[0])
    lines = [f"  {header[0]:<{width}}  {header[1]}", f"  {'-' * width}  {'-' * len(header[1])}"]
    lines += [f"  {feature:<{width}}  {value}" for feature, value in rows]
    return "\n".join(lines)


def cmd_capabilities(args: argparse.Namespace) -> int:
    """Open every token and print what it can do."""
    config = _load(args)
    settings = config.token_settings()
    from gateway.token import TokenSet  # lazy: loads pkcs11

    tokens = TokenSet.open(settings)
    try:
        for i, name in enumerate(tokens.names):
            if i:
                print()
            print(name)
            print(format_table(tokens[name].capabilities.rows()))
    finally:
        tokens.close()
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="REST gateway performing key derivation inside PKCS#11 tokens.",
        epilog=f"The config file defaults to ${CONFIG_ENV}, else {DEFAULT_CONFIG}. "
               "Exit codes: 0 ok, 1 failure, 2 usage or configuration error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging, and tracebacks on errors")

    # --config on every subcommand, so it can follow the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=_default_config(),
                        help=f"TOML configuration file (default: ${CONFIG_ENV} or {DEFAULT_CONFIG}; "
                             "currently %(default)s)")

    commands = parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", parents=[common], help="run the HTTP server",
        description="Open every configured token, then serve HTTP(S) on server.listen until "
                    "interrupted. GET /healthz and GET /readyz report liveness and readiness.",
    )
    serve.set_defaults(handler=cmd_serve)

    tokens = commands.add_parser(
        "tokens", help="manage tokens",
        description="Token management commands.",
    )
    tokens_commands = tokens.add_subparsers(title="commands", dest="tokens_command",
                                            required=True, metavar="COMMAND")
    init = tokens_commands.add_parser(
        "init", parents=[common], help="create the development tokens (idempotent)",
        description="For every token with a [tokens.provision] table, create the SoftHSM2 token "
                    "or NSS database if missing, and its pin_file (random PIN, mode 0600) if "
                    "missing. Existing tokens are left alone. Uses softhsm2-util and certutil.",
    )
    init.set_defaults(handler=cmd_tokens_init)

    capabilities = commands.add_parser(
        "capabilities", parents=[common], help="show what each token can do",
        description="Open every configured token and print, per token, a table of the "
                    "features it supports.",
    )
    capabilities.set_defaults(handler=cmd_capabilities)

    jwt_parser = commands.add_parser("jwt", help="development JWTs", description="Development JWT commands.")
    jwt_commands = jwt_parser.add_subparsers(title="commands", dest="jwt_command", required=True, metavar="COMMAND")
    issue = jwt_commands.add_parser(
        "issue", parents=[common], help="print a dev JWT signed with vault.dev_issuer_key",
        description="Mint a JWT (ES256 or RS256, kid = the key's RFC 7638 thumbprint) with the private key "
                    "vault.dev_issuer_key, for the configured issuer that trusts it. Development only.",
    )
    issue.add_argument("--sub", required=True, help="subject, e.g. application:<uuid>, organization:<uuid>, user:<uuid>")
    issue.add_argument("--scope", help="a scope claim (string)")
    issue.add_argument("--claims", metavar="JSON", help='extra claims as a JSON object, e.g. \'{"prvd": {...}}\'')
    issue.add_argument("--lifetime", type=int, default=3600, metavar="SECONDS", help="validity (default 3600)")
    issue.set_defaults(handler=cmd_jwt_issue)
    return parser


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)  # exits 2 on usage errors, 0 on --help
    _setup_logging(args.debug)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"gateway: error: {exc.message}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        print(f"gateway: failed: {type(exc).__name__}: {exc} (rerun with --debug for details)",
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
