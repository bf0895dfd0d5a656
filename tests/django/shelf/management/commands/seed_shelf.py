"""Fills the bookshelf's empty tables with a small shelf, the same at every run (ids from 1)."""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from shelf.models import Author, Book, Country, Review, Tag

COUNTRIES = ["France", "Japan", "Nigeria", "Brazil", "Canada", "India"]
TAGS = ["classic", "crime", "essay", "fantasy", "history", "humour", "poetry", "romance", "science", "travel", "war", "youth"]
AUTHORS = 40
BOOKS = 400


class Command(BaseCommand):
    help = "seed the bookshelf (its tables must be empty): 6 countries, 40 authors, 12 tags, 400 books and their tags and reviews"

    def handle(self, *args, **options):
        if Book.objects.exists() or Author.objects.exists():
            raise CommandError("the bookshelf is not empty")
        with transaction.atomic():
            countries = Country.objects.bulk_create([Country(name=n) for n in COUNTRIES])
            # Every seventh author has no country.
            authors = Author.objects.bulk_create(
                [Author(name=f"Author {i}", country=None if i % 7 == 6 else countries[i % 7]) for i in range(AUTHORS)]
            )
            tags = Tag.objects.bulk_create([Tag(name=n) for n in TAGS])
            books = Book.objects.bulk_create([Book(title=f"Book {i}", author=authors[i % AUTHORS]) for i in range(BOOKS)])
            # 0 to 3 tags and 0 to 2 reviews, counted by i // 16 so that each residue of the id
            # modulo 16 (the driver's buckets) has books of every count.
            Book.tags.through.objects.bulk_create(
                [Book.tags.through(book=book, tag=tags[(i + 3 * k) % len(tags)]) for i, book in enumerate(books) for k in range(i // 16 % 4)]
            )
            Review.objects.bulk_create(
                [Review(book=book, stars=1 + (i + j) % 5, body=f"Review {j} of book {i}") for i, book in enumerate(books) for j in range((i // 16 + 1) % 3)]
            )
        for model in (Country, Author, Tag, Book, Book.tags.through, Review):
            self.stdout.write(f"{model._meta.db_table}: {model.objects.count()} rows")
