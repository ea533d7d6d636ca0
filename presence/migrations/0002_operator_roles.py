from django.db import migrations


def create_roles(apps, schema_editor):
    from presence.roles import ensure_roles

    ensure_roles(apps)


class Migration(migrations.Migration):

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("presence", "0001_initial"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="userstatus",
            options={
                "permissions": [
                    ("view_connections", "Can view live connections"),
                    ("view_instances", "Can view chat instances"),
                    ("disconnect_user", "Can disconnect a user's sockets"),
                ],
                "verbose_name_plural": "user statuses",
            },
        ),
        migrations.RunPython(create_roles, migrations.RunPython.noop),
    ]
