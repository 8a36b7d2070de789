"""The ``gateway`` command: serve, provision dev tokens, show token capabilities and keys.

Exit codes (also in ``--help`` and docs/operations.md): 0 success, 1 failure,
2 usage or configuration error, 3 a token is unavailable (module, slot, PIN),
130 interrupted.  Expected errors print one line to stderr, no traceback
(``--debug`` adds it).
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

from gateway import __version__, hem_commands
from gateway.config import Config, load_config
from gateway.errors import ConfigError, GatewayError, TokenUnavailable

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_TOKEN_UNAVAILABLE: Final = 3
EXIT_INTERRUPTED: Final = 130  # shell convention for SIGINT
EXIT_CODES_HELP: Final = (
    "Exit codes: 0 ok; 1 failure; 2 usage or configuration error; 3 a token is unavailable "
    "(module, slot or PIN); 130 interrupted."
)
CONFIG_ENV: Final = "GATEWAY_CONFIG"
DEFAULT_CONFIG: Final = "config/dev.toml"

Handler = Callable[[argparse.Namespace], int]


def _default_config() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config)


# --------------------------------------------------------------------------- commands


def _worker_count(text: str) -> int:
    """argparse type of --workers: an integer from 1 to MAX_WORKERS."""
    from gateway.config import MAX_WORKERS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_WORKERS}, got {value}")
    return value


def _worker_argv(args: argparse.Namespace, config: Config) -> Callable[[int], list[str]]:
    """The command line of one worker process, given its ready-pipe descriptor."""
    debug = ["--debug"] if args.debug else []

    def argv(ready_fd: int) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", *debug, "serve", "--config", str(config.path),
                "--worker-ready-fd", str(ready_fd)]

    return argv


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP server (one process, or a supervisor and N workers) until SIGTERM/SIGINT."""
    from gateway.logs import setup_logging

    config = _load(args)
    setup_logging("debug" if args.debug else config.logging.level, config.logging.format)
    from gateway import server  # lazy: pulls in aiohttp

    if args.worker_ready_fd is not None:  # started by a supervisor
        return server.run_worker(config, reuse_port=True, on_ready=server.ready_notifier(args.worker_ready_fd))
    workers = args.workers or config.server.workers
    announce = lambda: print(server.banner(config, workers), flush=True)  # noqa: E731
    if workers == 1:
        return server.run_worker(config, on_ready=announce)
    # Fail here, with the key named, rather than in every worker.
    for token in config.tokens:
        token.pin.resolve()
    from gateway.http.app import ssl_context

    ssl_context(config.server)
    return server.Supervisor(config, workers, _worker_argv(args, config), on_ready=announce).run()


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
    hem_message = hem_commands.provision_dev_user(config)  # [hem] dev_user: its entry and passphrase
    if hem_message:
        print(hem_message)
    from gateway import tls

    if tls.uses_dev_tls(config):
        dev = tls.ensure_dev_tls(tls.dev_tls_dir(config), tls.hosts_for(config))
        state = "created" if dev.created_ca else "kept"
        print(f"tls: development CA {state} at {dev.ca_cert}; server certificate "
              f"{'issued' if dev.issued_server else 'kept'} at {dev.cert}")
        print(f"tls: trust it with: {tls.curl_hint(config)}")
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


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns with a header rule, indented by two spaces (last column unpadded)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1])] + [cells[-1]]
        return "  " + "  ".join(padded)

    rule = ["-" * w for w in widths[:-1]] + ["-" * len(header[-1])]  # the free-text last column stays short
    return "\n".join([line(header), line(rule), *(line(r) for r in rows)])


def _key_type(info: object) -> str:
    """``AES-256``, ``GENERIC_SECRET-256`` or the curve name, for one KeyInfo."""
    secret_type = getattr(info, "secret_type", None)
    if secret_type is not None:
        length = getattr(info, "length", None)
        return f"{secret_type.value}-{length * 8}" if length else secret_type.value
    curve = getattr(info, "curve", None)
    return curve.value if curve is not None else "?"


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Every key on every configured token, as one table (or JSON lines)."""
    import json

    config = _load(args)
    if args.token is not None and args.token not in config.token_names:
        raise ConfigError(f"--token: no token named {args.token!r}; configured: {', '.join(config.token_names)}")
    names = [args.token] if args.token else config.token_names
    settings = [config.token(name).settings() for name in names]
    from gateway.token import TokenSet  # lazy: loads pkcs11

    tokens = TokenSet.open(settings)
    try:
        rows = [(token.name, info.kid.hex(), info.key_class.value, _key_type(info), info.label)
                for token in tokens for info in token.list_keys()]
    finally:
        tokens.close()
    header = ("token", "kid", "class", "type", "label")
    if args.json:
        for row in rows:
            print(json.dumps(dict(zip(header, row))))
        return EXIT_OK
    print(format_columns(header, rows))
    print(f"  ({len(rows)} key{'s' if len(rows) != 1 else ''} on {len(names)} token{'s' if len(names) != 1 else ''})")
    return EXIT_OK


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
        epilog=f"The config file defaults to ${CONFIG_ENV}, else {DEFAULT_CONFIG}. {EXIT_CODES_HELP} "
               "More: gateway COMMAND --help, and docs/operations.md.",
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
        description="Open every configured token, then serve HTTPS (HTTP without server.tls_cert) on "
                    "server.listen until SIGTERM or SIGINT. With --workers N, N processes share the port "
                    "(each opens the tokens itself). On SIGTERM/SIGINT it stops accepting, lets in-flight "
                    "requests finish within server.shutdown_timeout, then logs out of the tokens. "
                    "GET /healthz, /readyz and /metrics report liveness, readiness and metrics; "
                    "/docs is the API reference.",
        epilog=EXIT_CODES_HELP,
    )
    serve.add_argument("--workers", type=_worker_count, metavar="N",
                       help="worker processes on the one port (1-64; default: server.workers, else 1)")
    serve.add_argument("--worker-ready-fd", type=int, help=argparse.SUPPRESS)  # set by the supervisor
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
                    "missing. Existing tokens are left alone. Uses softhsm2-util and certutil. "
                    "When server.tls_cert and server.tls_key are in <state_dir>/tls (as in config/dev.toml), "
                    "also create a development CA there (once) and a server certificate it signs.",
        epilog=EXIT_CODES_HELP,
    )
    init.set_defaults(handler=cmd_tokens_init)

    capabilities = commands.add_parser(
        "capabilities", parents=[common], help="show what each token can do",
        description="Open every configured token and print, per token, a table of the "
                    "features it supports.",
    )
    capabilities.set_defaults(handler=cmd_capabilities)

    keys = commands.add_parser("keys", help="inspect the keys in the tokens", description="Key commands.")
    keys_commands = keys.add_subparsers(title="commands", dest="keys_command", required=True, metavar="COMMAND")
    keys_list = keys_commands.add_parser(
        "list", parents=[common], help="list every key on every configured token",
        description="Open every configured token and print one table of all its key objects: token, kid "
                    "(CKA_ID in hex), class (secret, private, public), type (curve, or secret type and "
                    "bits) and label (the gateway keeps key metadata there). No key material is read.",
        epilog=EXIT_CODES_HELP,
    )
    keys_list.add_argument("--token", metavar="NAME", help="only this configured token")
    keys_list.add_argument("--json", action="store_true", help="one JSON object per key instead of a table")
    keys_list.set_defaults(handler=cmd_keys_list)

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
    hem_commands.add_commands(commands, common)  # hem-user add, audit verify
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
    except TokenUnavailable as exc:
        if args.debug:
            traceback.print_exc()
        print(f"gateway: token unavailable: {exc.message}", file=sys.stderr)
        return EXIT_TOKEN_UNAVAILABLE
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
