"""`myotriage`: the command line of the whole system.

myotriage run                         everything locally on embedded defaults
myotriage db upgrade                  apply database migrations
myotriage api-key create NAME --scope assessments:write --scope reports:read
myotriage api-key revoke ID_OR_PREFIX
myotriage integration create NAME [--scope assessments:write]   an EHR that sends webhooks
myotriage integration add-secret ID [--expire-others-in-hours H]   rotate its signing secret
myotriage integration list
myotriage relay                       run the outbox relay
myotriage rescore [--id ID ...|--all] re-score under the current rule set (keeps old results)
myotriage rescore --all --dry-run [--json]   what a re-score would change; writes no result
myotriage evaluate FILE.jsonl         the rule engine against vignettes
myotriage explain REPORT.json         the level and why, rule by rule
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.config import Settings


def _db_upgrade(args: argparse.Namespace) -> int:
    from shared.migrate import upgrade_database

    settings = Settings.from_env()
    upgrade_database(settings.database_url, args.revision)
    print(f"database at revision {args.revision}")
    return 0


def _api_key_create(args: argparse.Namespace) -> int:
    from shared.auth import create_api_key
    from shared.db import make_engine, make_session_factory, transaction

    sessions = make_session_factory(make_engine(Settings.from_env().database_url))
    try:
        with transaction(sessions) as session:
            row, raw = create_api_key(session, args.name, args.scope)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"id:     {row.id}\nscopes: {' '.join(row.scopes)}\nkey:    {raw}")
    print("Store the key now: only its hash is kept.", file=sys.stderr)
    return 0


def _api_key_revoke(args: argparse.Namespace) -> int:
    from shared.auth import revoke_api_key
    from shared.db import make_engine, make_session_factory, transaction

    sessions = make_session_factory(make_engine(Settings.from_env().database_url))
    with transaction(sessions) as session:
        done = revoke_api_key(session, args.key)
    print("revoked" if done else "no such active key")
    return 0 if done else 1


def _integration_sessions() -> Any:
    from shared.db import make_engine, make_session_factory

    return make_session_factory(make_engine(Settings.from_env().database_url))


def _integration_create(args: argparse.Namespace) -> int:
    from services.intake import ehr_integrations
    from shared.db import transaction

    try:
        with transaction(_integration_sessions()) as session:
            row, _, secret = ehr_integrations.create_integration(
                session, args.name, args.scope or list(ehr_integrations.DEFAULT_SCOPES)
            )
    except ehr_integrations.IntegrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"id:      {row.id}\nname:    {row.name}\nscopes:  {' '.join(row.scopes)}")
    print(f"webhook: POST /v1/webhooks/ehr/{row.id}\nsecret:  {secret}")
    print("Give the secret to the sender now: it is not shown again.", file=sys.stderr)
    return 0


def _integration_add_secret(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from services.intake import ehr_integrations
    from shared.db import transaction

    hours = args.expire_others_in_hours
    with transaction(_integration_sessions()) as session:
        integration = ehr_integrations.get_integration(session, args.id)
        if integration is None:
            print("error: no integration has this id", file=sys.stderr)
            return 1
        row, secret = ehr_integrations.add_secret(
            session,
            integration,
            expire_others_in=timedelta(hours=hours) if hours is not None else None,
        )
    print(f"secret id: {row.id}\nsecret:    {secret}")
    print("Give the secret to the sender now: it is not shown again.", file=sys.stderr)
    return 0


def _integration_list(_: argparse.Namespace) -> int:
    from services.intake import ehr_integrations

    with _integration_sessions()() as session:
        for integration in ehr_integrations.list_integrations(session):
            view = ehr_integrations.describe(integration)
            state = "disabled" if view["disabled_at"] else "enabled"
            active = sum(1 for s in view["secrets"] if s["active"])
            print(
                f"{view['id']}  {view['name']}  {state}  scopes={','.join(view['scopes'])}  "
                f"active_secrets={active}"
            )
    return 0


def _relay(_: argparse.Namespace) -> int:
    from services.rules.relay import main

    main()
    return 0


def _rescore(args: argparse.Namespace) -> int:
    from services.rules.rescoring import rescore

    if args.json and not args.dry_run:
        print("error: --json goes with --dry-run", file=sys.stderr)
        return 2
    return rescore(args.id, all_assessments=args.all, dry_run=args.dry_run, as_json=args.json)


def _engine(argv: list[str]) -> int:
    from services.rules.engine_cli import main

    return int(main(argv))


def _run(_: argparse.Namespace) -> int:
    from services.local_stack import run_local

    return run_local()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="myotriage", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start everything locally").set_defaults(func=_run)

    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db", required=True)
    upgrade = db.add_parser("upgrade", help="apply migrations")
    upgrade.add_argument("revision", nargs="?", default="heads")
    upgrade.set_defaults(func=_db_upgrade)

    keys = sub.add_parser("api-key", help="manage API keys").add_subparsers(
        dest="keys", required=True
    )
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("name")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="assessments:write, assessments:read, reports:read or admin; repeat",
    )
    create.set_defaults(func=_api_key_create)
    revoke = keys.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key")
    revoke.set_defaults(func=_api_key_revoke)

    integrations = sub.add_parser(
        "integration", help="EHR integrations that send signed webhooks"
    ).add_subparsers(dest="integrations", required=True)
    integration_create = integrations.add_parser(
        "create", help="register an integration (its secret is printed once)"
    )
    integration_create.add_argument("name")
    integration_create.add_argument(
        "--scope", action="append", help="default assessments:write; repeat"
    )
    integration_create.set_defaults(func=_integration_create)
    add_secret = integrations.add_parser("add-secret", help="add a signing secret (rotation)")
    add_secret.add_argument("id")
    add_secret.add_argument(
        "--expire-others-in-hours",
        type=float,
        help="the current secrets stop working after this many hours (default: never)",
    )
    add_secret.set_defaults(func=_integration_add_secret)
    integrations.add_parser("list", help="list integrations").set_defaults(func=_integration_list)

    sub.add_parser("relay", help="run the outbox relay").set_defaults(func=_relay)

    rescore = sub.add_parser("rescore", help="re-score under the current rule set (admin)")
    target = rescore.add_mutually_exclusive_group(required=True)
    target.add_argument("--id", action="append", help="an assessment id; repeat")
    target.add_argument("--all", action="store_true", help="every scored assessment")
    rescore.add_argument(
        "--dry-run",
        action="store_true",
        help="score in memory and print what would change (counts, levels, rule ids); "
        "write no result",
    )
    rescore.add_argument("--json", action="store_true", help="with --dry-run: print it as JSON")
    rescore.set_defaults(func=_rescore)

    for name, text in (
        ("evaluate", "score vignettes and print accuracy"),
        ("explain", "print the level and why, rule by rule"),
    ):
        engine_cmd = sub.add_parser(name, help=text, add_help=False)
        engine_cmd.add_argument("rest", nargs=argparse.REMAINDER)
        engine_cmd.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("evaluate", "explain"):
        return _engine(argv)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
