"""`myotriage`: the command line of the whole system.

myotriage run                         everything locally on embedded defaults
myotriage db upgrade                  apply database migrations
myotriage tenant create NAME          an organisation; every key, integration and report is one's
myotriage tenant list
myotriage api-key create NAME [--tenant T] --scope assessments:write --scope reports:read
myotriage api-key revoke ID_OR_PREFIX
myotriage integration create NAME [--tenant T] [--scope assessments:write]   an EHR's webhooks
myotriage integration add-secret ID [--expire-others-in-hours H]   rotate its signing secret
myotriage integration list [--tenant T]
myotriage secrets rotate              re-encrypt stored signing secrets under the first key
myotriage secrets generate-key        a new key for MYOTRIAGE_SECRET_KEYS
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
from shared.models.tenants import DEFAULT_TENANT_NAME


def _db_upgrade(args: argparse.Namespace) -> int:
    from shared.migrate import upgrade_database

    settings = Settings.from_env()
    upgrade_database(settings.database_url, args.revision)
    print(f"database at revision {args.revision}")
    return 0


def _sessions() -> Any:
    from shared.db import make_engine, make_session_factory

    return make_session_factory(make_engine(Settings.from_env().database_url))


class _NoSuchTenant(Exception):
    pass


def _tenant_id(session: Any, name_or_id: str) -> str:
    from shared import repository

    tenant = repository.find_tenant(session, name_or_id)
    if tenant is None:
        raise _NoSuchTenant(f"no tenant is named {name_or_id!r} (see `myotriage tenant list`)")
    return tenant.id


def _tenant_create(args: argparse.Namespace) -> int:
    from shared import repository
    from shared.db import transaction

    try:
        with transaction(_sessions()) as session:
            tenant = repository.create_tenant(session, args.name)
            print(f"id:   {tenant.id}\nname: {tenant.name}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _tenant_list(_: argparse.Namespace) -> int:
    from shared import repository

    with _sessions()() as session:
        for tenant in repository.tenants(session):
            print(f"{tenant.id}  {tenant.name}")
    return 0


def _api_key_create(args: argparse.Namespace) -> int:
    from shared.auth import create_api_key
    from shared.db import transaction

    try:
        with transaction(_sessions()) as session:
            tenant_id = _tenant_id(session, args.tenant)
            row, raw = create_api_key(session, args.name, args.scope, tenant_id)
    except (ValueError, _NoSuchTenant) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"id:     {row.id}\ntenant: {args.tenant}\nscopes: {' '.join(row.scopes)}\nkey:    {raw}")
    print("Store the key now: only its hash is kept.", file=sys.stderr)
    return 0


def _api_key_revoke(args: argparse.Namespace) -> int:
    from shared.auth import announce_revocation, revoke_api_key
    from shared.db import transaction

    with transaction(_sessions()) as session:
        done = revoke_api_key(session, args.key)
    if done is None:
        print("no such active key")
        return 1
    print("revoked")
    # Committed: now every running service drops the key from its cache at once.
    settings = Settings.from_env()
    if not announce_revocation(settings.redis_url, [done.key_hash]):
        print(
            _NOT_ANNOUNCED.format(what="key", seconds=settings.api_key_cache_seconds),
            file=sys.stderr,
        )
    return 0


def _integration_create(args: argparse.Namespace) -> int:
    from services.intake import ehr_integrations
    from shared.db import transaction

    try:
        with transaction(_sessions()) as session:
            row, _, secret = ehr_integrations.create_integration(
                session,
                args.name,
                args.scope or list(ehr_integrations.DEFAULT_SCOPES),
                tenant_id=_tenant_id(session, args.tenant),
            )
    except (ehr_integrations.IntegrationError, _NoSuchTenant) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"id:      {row.id}\nname:    {row.name}\nscopes:  {' '.join(row.scopes)}")
    _announce_integration_change(row)  # a service may remember its name as unknown
    print(f"webhook: POST /v1/webhooks/ehr/{row.id}\nsecret:  {secret}")
    print("Give the secret to the sender now: it is not shown again.", file=sys.stderr)
    return 0


def _integration_add_secret(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from services.intake import ehr_integrations
    from shared.db import transaction

    hours = args.expire_others_in_hours
    with transaction(_sessions()) as session:
        integration = ehr_integrations.find_integration_by_id(session, args.id)
        if integration is None:
            print("error: no integration has this id", file=sys.stderr)
            return 1
        row, secret = ehr_integrations.add_secret(
            session,
            integration,
            expire_others_in=timedelta(hours=hours) if hours is not None else None,
        )
    _announce_integration_change(integration)  # the new secret works at once everywhere
    print(f"secret id: {row.id}\nsecret:    {secret}")
    print("Give the secret to the sender now: it is not shown again.", file=sys.stderr)
    return 0


def _integration_list(args: argparse.Namespace) -> int:
    from services.intake import ehr_integrations

    with _sessions()() as session:
        try:
            tenant_id = _tenant_id(session, args.tenant) if args.tenant else None
        except _NoSuchTenant as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for integration in ehr_integrations.list_integrations(session, tenant_id):
            view = ehr_integrations.describe(integration)
            state = "disabled" if view["disabled_at"] else "enabled"
            active = sum(1 for s in view["secrets"] if s["active"])
            print(
                f"{view['id']}  tenant={view['tenant_id']}  {view['name']}  {state}  "
                f"scopes={','.join(view['scopes'])}  active_secrets={active}"
            )
    return 0


_NOT_ANNOUNCED = (
    "warning: Redis is unreachable, so running services were not told: they notice the change "
    "to this {what} within MYOTRIAGE_API_KEY_CACHE_SECONDS ({seconds:g} s)."
)


def _announce_integration_change(integration: Any) -> None:
    from services.intake.webhook_verification import announce_integration_change

    settings = Settings.from_env()
    if not announce_integration_change(settings.redis_url, integration.id, integration.name):
        print(
            _NOT_ANNOUNCED.format(what="integration", seconds=settings.api_key_cache_seconds),
            file=sys.stderr,
        )


def _secrets_rotate(_: argparse.Namespace) -> int:
    from shared.db import make_engine
    from shared.secrets_at_rest import SecretUndecryptable, current_keyring, rotate_stored_secrets

    keyring = current_keyring()
    if keyring is None:
        print(
            "error: MYOTRIAGE_SECRET_KEYS is not set: put the new key first, the old ones after "
            "it (docs/SECURITY.md)",
            file=sys.stderr,
        )
        return 2
    engine = make_engine(Settings.from_env().database_url)
    try:
        with engine.begin() as connection:
            counts = rotate_stored_secrets(connection, keyring)
    except SecretUndecryptable as exc:
        print(f"error: {exc}; nothing was changed", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    for count in counts:
        print(
            f"{count.table}: {count.reencrypted} re-encrypted, {count.encrypted} encrypted "
            f"(were in clear), {count.current} already under the first key"
        )
    print("Every stored secret is now under the first key: keys after it may be removed.")
    return 0


def _secrets_generate_key(_: argparse.Namespace) -> int:
    from shared.secrets_at_rest import generate_secret_key

    print(generate_secret_key())
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

    tenants = sub.add_parser("tenant", help="organisations").add_subparsers(
        dest="tenants", required=True
    )
    tenant_create = tenants.add_parser("create", help="create a tenant")
    tenant_create.add_argument("name")
    tenant_create.set_defaults(func=_tenant_create)
    tenants.add_parser("list", help="list tenants").set_defaults(func=_tenant_list)

    tenant_help = f"the tenant's name or id (default: {DEFAULT_TENANT_NAME})"
    keys = sub.add_parser("api-key", help="manage API keys").add_subparsers(
        dest="keys", required=True
    )
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("name")
    create.add_argument("--tenant", default=DEFAULT_TENANT_NAME, help=tenant_help)
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
    integration_create.add_argument("--tenant", default=DEFAULT_TENANT_NAME, help=tenant_help)
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
    integration_list = integrations.add_parser("list", help="list integrations")
    integration_list.add_argument("--tenant", help="only this tenant's (default: every tenant's)")
    integration_list.set_defaults(func=_integration_list)

    stored_secrets = sub.add_parser(
        "secrets", help="signing secrets encrypted at rest (MYOTRIAGE_SECRET_KEYS)"
    ).add_subparsers(dest="secrets", required=True)
    stored_secrets.add_parser(
        "rotate", help="re-encrypt every stored signing secret under the first key"
    ).set_defaults(func=_secrets_rotate)
    stored_secrets.add_parser(
        "generate-key", help="print a new key for MYOTRIAGE_SECRET_KEYS"
    ).set_defaults(func=_secrets_generate_key)

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
    try:
        return int(args.func(args))
    except Exception as exc:
        from shared.secrets_at_rest import secret_keys_problem

        keys_problem = secret_keys_problem(exc)
        if keys_problem is None:
            raise
        print(f"error: {keys_problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
