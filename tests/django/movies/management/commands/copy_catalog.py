"""Copies the catalog's rows from another database (the reference `movies_ref`) into this one's
Django-made tables, by COPY with each model's own columns."""
import io

import psycopg2
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from movies.models import Filmwork, Genre, GenreFilmwork, Person, PersonFilmwork

MODELS = [Genre, Person, Filmwork, GenreFilmwork, PersonFilmwork]


class Command(BaseCommand):
    help = "copy the catalog from another database into the Django-made tables (which must be empty)"

    def add_arguments(self, parser):
        parser.add_argument("--from-dsn", required=True, help="libpq connection string of the source database")

    def handle(self, *args, **options):
        source = psycopg2.connect(options["from_dsn"])
        try:
            with transaction.atomic(), connection.cursor() as target:
                for model in MODELS:
                    table = "content." + model._meta.db_table.split('"."')[1]
                    columns = ", ".join(f.column for f in model._meta.concrete_fields)
                    data = io.StringIO()
                    with source.cursor() as cur:
                        cur.copy_expert(f"COPY (SELECT {columns} FROM {table}) TO STDOUT", data)
                    data.seek(0)
                    target.cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", data)
                    self.stdout.write(f"{table}: {model.objects.count()} rows")
        finally:
            source.close()
