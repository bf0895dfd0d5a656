"""For pg2es's PG2ES_SOURCE=replication: a deleted row of the link table Django made for
Book.tags, and of the one-to-many table shelf_review, must name its book in the WAL
(docs/definition.md, "How changes are tracked")."""
from django.db import migrations

TABLES = ["shelf_book_tags", "shelf_review"]


class Migration(migrations.Migration):
    dependencies = [("shelf", "0001_initial")]

    operations = [
        migrations.RunSQL(
            [f"ALTER TABLE {t} REPLICA IDENTITY FULL" for t in TABLES],
            reverse_sql=[f"ALTER TABLE {t} REPLICA IDENTITY DEFAULT" for t in TABLES],
        ),
    ]
