"""The credential-change counter and the triggers that raise it (chat/revocation.py).

PostgreSQL and SQLite get triggers; on another database the instances fall back to checking
every socket's credential each round."""

from django.conf import settings
from django.db import migrations, models

ROW = "INSERT INTO chat_credentialchanges (id, generation) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET generation = chat_credentialchanges.generation + 1"


def _tables(apps):
    user = apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table
    return user, "authtoken_token", "django_session"


def create_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    user, token, session = _tables(apps)
    existing = set(schema_editor.connection.introspection.table_names())
    if vendor == "postgresql":
        statements = [
            f"CREATE OR REPLACE FUNCTION chat_credentials_changed() RETURNS trigger AS $$ BEGIN {ROW}; RETURN NULL; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER chat_user_credentials_changed AFTER UPDATE OF is_active, password ON {user} FOR EACH ROW "
            "WHEN (OLD.is_active IS DISTINCT FROM NEW.is_active OR OLD.password IS DISTINCT FROM NEW.password) "
            "EXECUTE FUNCTION chat_credentials_changed()",
            f"CREATE TRIGGER chat_user_deleted AFTER DELETE ON {user} FOR EACH STATEMENT EXECUTE FUNCTION chat_credentials_changed()",
        ]
        # A token's key changed or its row gone; a session row gone (a logout, a flush, an
        # operator). A session row's ordinary updates end nothing.
        for name, table, events in (("token", token, "DELETE OR UPDATE"), ("session", session, "DELETE")):
            if table in existing:
                statements.append(
                    f"CREATE TRIGGER chat_{name}_deleted AFTER {events} ON {table} FOR EACH STATEMENT "
                    "EXECUTE FUNCTION chat_credentials_changed()"
                )
    elif vendor == "sqlite":
        statements = [
            f"CREATE TRIGGER chat_user_credentials_changed AFTER UPDATE OF is_active, password ON {user} FOR EACH ROW "
            f"WHEN OLD.is_active IS NOT NEW.is_active OR OLD.password IS NOT NEW.password BEGIN {ROW}; END",
            f"CREATE TRIGGER chat_user_deleted AFTER DELETE ON {user} BEGIN {ROW}; END",
        ]
        for name, table in (("token", token), ("session", session)):
            if table in existing:
                statements.append(f"CREATE TRIGGER chat_{name}_deleted AFTER DELETE ON {table} BEGIN {ROW}; END")
        if token in existing:
            statements.append(f"CREATE TRIGGER chat_token_updated AFTER UPDATE ON {token} BEGIN {ROW}; END")
    else:
        return
    for statement in statements:
        schema_editor.execute(statement)


def drop_triggers(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    user, token, session = _tables(apps)
    names = [("chat_user_credentials_changed", user), ("chat_user_deleted", user)]
    names += [("chat_token_deleted", token), ("chat_session_deleted", session)]
    if vendor == "postgresql":
        for name, table in names:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        schema_editor.execute("DROP FUNCTION IF EXISTS chat_credentials_changed()")
    elif vendor == "sqlite":
        for name, _ in [*names, ("chat_token_updated", token)]:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("authtoken", "0003_tokenproxy"),
        ("sessions", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="CredentialChanges",
            fields=[
                ("id", models.PositiveSmallIntegerField(primary_key=True, serialize=False)),
                ("generation", models.BigIntegerField(default=0)),
            ],
            options={"verbose_name_plural": "credential changes"},
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
