from django.db import migrations, models


def copy_versions(apps, schema_editor):
    # Clients hold versions they have seen; the public ones continue from there.
    UserStatus = apps.get_model("presence", "UserStatus")
    UserStatus.objects.update(public_version=models.F("version"), public_last_seen=models.F("last_seen"))


class Migration(migrations.Migration):

    dependencies = [
        ("presence", "0002_operator_roles"),
    ]

    operations = [
        migrations.AddField(
            model_name="userstatus",
            name="public_version",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="userstatus",
            name="public_last_seen",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(copy_versions, migrations.RunPython.noop),
    ]
