"""For pg2es's PG2ES_SOURCE=replication: a deleted link row must name its film in the WAL."""
from django.db import migrations

LINK_TABLES = ["genre_film_work", "person_film_work"]


class Migration(migrations.Migration):
    dependencies = [("movies", "0001_initial")]

    operations = [
        migrations.RunSQL(
            [f"ALTER TABLE content.{t} REPLICA IDENTITY FULL" for t in LINK_TABLES],
            reverse_sql=[f"ALTER TABLE content.{t} REPLICA IDENTITY DEFAULT" for t in LINK_TABLES],
        ),
    ]
