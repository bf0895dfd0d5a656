"""Every way the ORM writes the bookshelf, one path at a time, each in its own transaction(s): the
paths of movies' drive_writes, on Django's defaults (bigint keys, the auto-created Book.tags
table), with renames at each level (tag, review, author, the author's country).

Prints one JSON line per step: the path, the step and the ids it wrote. Each path picks its books
among those whose id is its own number modulo 16, so paths run one after another do not take each
other's books (fan-outs through an author, country or tag excepted). Rows the fixture names are
never deleted, so loaddata finds them.
"""
import time

from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import Count
from django.db.models.functions import Mod

from catalog_site.paths import PathsCommand
from shelf.models import Author, Book, Country, Review, Tag

BookTag = Book.tags.through

PATHS = [
    "save",
    "save_update_fields",
    "queryset_update",
    "bulk_create",
    "bulk_update",
    "m2m_add",
    "m2m_remove",
    "m2m_set",
    "m2m_clear",
    "reverse_fk",
    "delete",
    "queryset_delete",
    "loaddata",
    "links_later",
    "slow_atomic",
]

# What fixtures/shelf_edit.json names (it edits book 1 and adds book 100001).
FIXTURE_COUNTRIES = [1]
FIXTURE_AUTHORS = [1, 2]
FIXTURE_TAGS = [1, 2, 3]


def ids(objects):
    """Distinct ids in first-seen order."""
    return list(dict.fromkeys(o.pk for o in objects))


def with_books(model, n=1):
    """Rows of `model` (Author, Tag) with at least n books, fewest first."""
    return model.objects.annotate(n=Count("book", distinct=True)).filter(n__gte=n).order_by("n", "id")


def books_of_authors(authors):
    return list(Book.objects.filter(author__in=authors).order_by("id"))


class Command(PathsCommand):
    paths = PATHS
    help = "write the bookshelf through each ORM path; --only PATH (repeatable) to choose"

    def books(self, path, n, tags=0, reviews=0):
        """n books of this path's bucket (id modulo 16), in id order, with as many tags and reviews."""
        bucket = PATHS.index(path)
        qs = Book.objects.annotate(bucket=Mod("id", 16)).filter(bucket=bucket).exclude(id=1).order_by("id")
        if tags:
            qs = qs.annotate(n_tags=Count("tags", distinct=True)).filter(n_tags__gte=tags)
        if reviews:
            qs = qs.annotate(n_reviews=Count("reviews", distinct=True)).filter(n_reviews__gte=reviews)
        found = list(qs[:n])
        if len(found) < n:
            raise CommandError(f"{path}: only {len(found)} books in bucket {bucket}, {n} needed")
        return found

    def path_save(self):
        with transaction.atomic():
            book = self.books("save", 1)[0]
            book.title = f"Saved {self.tag}"
            book.save()
        self.emit("save", "book", books=ids([book]))
        with transaction.atomic():
            tag = with_books(Tag).first()
            tag.name = f"{tag.name.split(' #')[0]} #{self.tag}"
            tag.save()
        self.emit("save", "tag rename", tags=ids([tag]))
        with transaction.atomic():
            review = Review.objects.filter(book__in=self.books("save", 2, reviews=1)).order_by("id").first()
            review.stars = 5 if review.stars != 5 else 1
            review.body = f"Saved {self.tag}"
            review.save()
        self.emit("save", "review", books=ids([review.book]), reviews=ids([review]))
        with transaction.atomic():
            author = with_books(Author, 2).first()
            author.name = f"Saved author {self.tag}"
            author.save()
        self.emit("save", "author rename", authors=ids([author]), books=ids(author.book_set.all()))
        with transaction.atomic():
            country = Country.objects.order_by("id").first()
            country.name = f"{country.name.split(' #')[0]} #{self.tag}"
            country.save()
        self.emit("save", "country rename", countries=ids([country]))

    def path_save_update_fields(self):
        # update_fields without updated_at: auto_now moves nothing.
        with transaction.atomic():
            book = self.books("save_update_fields", 1)[0]
            book.title = f"Title only {self.tag}"
            book.save(update_fields=["title"])
        self.emit("save_update_fields", "book title", books=ids([book]))
        with transaction.atomic():
            author = with_books(Author, 2).order_by("-n", "id").first()
            author.name = f"Name only {self.tag}"
            author.save(update_fields=["name"])
        self.emit("save_update_fields", "author name", authors=ids([author]))
        with transaction.atomic():
            country = Country.objects.order_by("-id").first()
            country.name = f"Name only {self.tag}"
            country.save(update_fields=["name"])
        self.emit("save_update_fields", "country name", countries=ids([country]))

    def path_queryset_update(self):
        path = "queryset_update"
        with transaction.atomic():
            author = with_books(Author, 3).first()
            Author.objects.filter(id=author.id).update(name=f"Renamed {self.tag}")
        self.emit(path, "author rename", authors=ids([author]), books=ids(author.book_set.all()))
        with transaction.atomic():
            country = Country.objects.annotate(n=Count("author")).filter(n__gte=1).order_by("n", "id").first()
            Country.objects.filter(id=country.id).update(name=f"Renamed {self.tag}")
        self.emit(path, "country rename", countries=ids([country]))
        with transaction.atomic():
            tag = with_books(Tag, 2).first()
            Tag.objects.filter(id=tag.id).update(name=f"renamed {self.tag}")
        self.emit(path, "tag rename", tags=ids([tag]))
        book, moved, relinked, reviewed, other = self.books(path, 5, tags=1, reviews=1)
        with transaction.atomic():
            Review.objects.filter(book=reviewed).update(stars=3, body=f"Updated {self.tag}")
        self.emit(path, "reviews of a book", books=ids([reviewed]))
        with transaction.atomic():
            author = Author.objects.exclude(id=book.author_id).order_by("id").first()
            Book.objects.filter(id=book.id).update(author=author)
        self.emit(path, "book to another author", books=ids([book]), authors=ids([author]))
        with transaction.atomic():
            country = Country.objects.exclude(id=author.country_id).order_by("id").first()
            Author.objects.filter(id=author.id).update(country=country)
        self.emit(path, "author to another country", authors=ids([author]), countries=ids([country]))
        with transaction.atomic():
            link = BookTag.objects.filter(book=relinked).order_by("id").first()
            tag = Tag.objects.exclude(book=relinked).order_by("id").first()
            BookTag.objects.filter(id=link.id).update(tag=tag)
        self.emit(path, "link to another tag", books=ids([relinked]), links=[link.id])
        with transaction.atomic():
            review = moved.reviews.order_by("id").first()
            Review.objects.filter(id=review.id).update(book=other)
        self.emit(path, "review to another book", books=ids([moved, other]), reviews=ids([review]))

    def path_bulk_create(self):
        tags = list(Tag.objects.order_by("id")[:2])
        with transaction.atomic():
            country = Country.objects.create(name=f"Bulk country {self.tag}")
            authors = Author.objects.bulk_create([Author(name=f"Bulk author {i} {self.tag}", country=country if i else None) for i in range(2)])
            books = Book.objects.bulk_create([Book(title=f"Bulk created {i} {self.tag}", author=authors[i % 2]) for i in range(3)])
            BookTag.objects.bulk_create([BookTag(book=b, tag=t) for b in books for t in tags])
            Review.objects.bulk_create([Review(book=b, stars=1 + i, body=f"Bulk review {i}") for i, b in enumerate(books)])
        self.emit("bulk_create", "books, authors, country, links, reviews", books=ids(books), authors=ids(authors))

    def path_bulk_update(self):
        path = "bulk_update"
        with transaction.atomic():
            books = self.books(path, 3)
            for i, b in enumerate(books):
                b.title = f"Bulk updated {i} {self.tag}"
            Book.objects.bulk_update(books, ["title"])
        self.emit(path, "book titles", books=ids(books))
        with transaction.atomic():
            reviews = list(Review.objects.filter(book__in=self.books(path, 4, reviews=1)).order_by("id")[:3])
            for r in reviews:
                r.stars = 5 if r.stars != 5 else 2
            Review.objects.bulk_update(reviews, ["stars"])
        self.emit(path, "review stars", reviews=ids(reviews))
        with transaction.atomic():
            authors = list(with_books(Author)[:2])
            countries = list(Country.objects.order_by("-id")[:2])
            for a, c in zip(authors, countries):
                a.country = c if a.country_id != c.id else None
                a.name = f"Bulk updated {a.id} {self.tag}"
            Author.objects.bulk_update(authors, ["country", "name"])
        self.emit(path, "author countries and names", authors=ids(authors))
        with transaction.atomic():
            tags = list(with_books(Tag)[:2])
            for t in tags:
                t.name = f"{t.name.split(' #')[0]} #{self.tag}"
            Tag.objects.bulk_update(tags, ["name"])
        self.emit(path, "tag names", tags=ids(tags))

    def path_m2m_add(self):
        book, other = self.books("m2m_add", 2)
        with transaction.atomic():
            tag = Tag.objects.exclude(book=book).order_by("id").first()
            book.tags.add(tag)
        self.emit("m2m_add", "tag of a book", books=ids([book]), tags=ids([tag]))
        with transaction.atomic():
            tag = Tag.objects.exclude(book=other).order_by("-id").first()
            tag.book_set.add(other)
        self.emit("m2m_add", "book of a tag (reverse)", books=ids([other]), tags=ids([tag]))

    def path_m2m_remove(self):
        book, other = self.books("m2m_remove", 2, tags=2)
        with transaction.atomic():
            tag = book.tags.order_by("id").first()
            book.tags.remove(tag)
        self.emit("m2m_remove", "tag of a book", books=ids([book]), tags=ids([tag]))
        with transaction.atomic():
            tag = other.tags.order_by("-id").first()
            tag.book_set.remove(other)
        self.emit("m2m_remove", "book of a tag (reverse)", books=ids([other]), tags=ids([tag]))

    def path_m2m_set(self):
        book, other = self.books("m2m_set", 2, tags=1)
        with transaction.atomic():
            kept = book.tags.order_by("id").first()
            new = Tag.objects.exclude(book=book).order_by("id").first()
            book.tags.set([kept, new])
        self.emit("m2m_set", "tags of a book", books=ids([book]), tags=ids([kept, new]))
        with transaction.atomic():
            tag = Tag.objects.exclude(book=other).order_by("-id").first()
            tag.book_set.set(list(tag.book_set.order_by("id")[1:]) + [other])
        self.emit("m2m_set", "books of a tag (reverse)", books=ids([other]), tags=ids([tag]))

    def path_m2m_clear(self):
        book = self.books("m2m_clear", 1, tags=2)[0]
        with transaction.atomic():
            book.tags.clear()
        self.emit("m2m_clear", "tags of a book", books=ids([book]))
        with transaction.atomic():
            tag = with_books(Tag, 2).exclude(id__in=FIXTURE_TAGS).first()
            books = ids(tag.book_set.all())
            tag.book_set.clear()
        self.emit("m2m_clear", "books of a tag (reverse)", tags=ids([tag]), books=books)

    def path_reverse_fk(self):
        path = "reverse_fk"
        book, saved, reviewed = self.books(path, 3)
        with transaction.atomic():
            author = Author.objects.exclude(id=book.author_id).order_by("-id").first()
            author.book_set.add(book)  # bulk=True: one UPDATE of shelf_book.author_id
        self.emit(path, "author.book_set.add", books=ids([book]), authors=ids([author]))
        with transaction.atomic():
            author = Author.objects.exclude(id=saved.author_id).order_by("id").first()
            author.book_set.add(saved, bulk=False)  # save() of the book
        self.emit(path, "author.book_set.add bulk=False", books=ids([saved]), authors=ids([author]))
        with transaction.atomic():
            review = reviewed.reviews.create(stars=4, body=f"Created from the book {self.tag}")
        self.emit(path, "book.reviews.create", books=ids([reviewed]), reviews=ids([review]))
        with transaction.atomic():
            country = Country.objects.order_by("id").first()
            author = with_books(Author).exclude(country=country).first()
            country.author_set.add(author)
        self.emit(path, "country.author_set.add", countries=ids([country]), authors=ids([author]))
        with transaction.atomic():
            country.author_set.remove(author)  # country_id set to NULL
        self.emit(path, "country.author_set.remove", countries=ids([country]), authors=ids([author]))
        with transaction.atomic():
            country = Country.objects.annotate(n=Count("author")).filter(n__gte=1).exclude(id__in=FIXTURE_COUNTRIES).order_by("-id").first()
            authors = ids(country.author_set.all())
            country.author_set.clear()
        self.emit(path, "country.author_set.clear", countries=ids([country]), authors=authors)

    def path_delete(self):
        # Deletes cascade in the ORM: Django deletes (or sets NULL on) the rows that point at it.
        path = "delete"
        book, reviewed = self.books(path, 2, tags=1, reviews=1)
        with transaction.atomic():
            deleted = ids([book])
            book.delete()
        self.emit(path, "book (its links and reviews)", books=deleted)
        with transaction.atomic():
            review = reviewed.reviews.order_by("id").first()
            deleted = ids([review])
            review.delete()
        self.emit(path, "review", books=ids([reviewed]), reviews=deleted)
        with transaction.atomic():
            tag = with_books(Tag).exclude(id__in=FIXTURE_TAGS).first()
            books, deleted = ids(tag.book_set.all()), ids([tag])
            tag.delete()
        self.emit(path, "tag (its links)", tags=deleted, books=books)
        with transaction.atomic():
            country = Country.objects.annotate(n=Count("author")).filter(n__gte=1).exclude(id__in=FIXTURE_COUNTRIES).order_by("n", "id").first()
            authors, deleted = ids(country.author_set.all()), ids([country])
            country.delete()
        self.emit(path, "country (its authors' country set to NULL)", countries=deleted, authors=authors)
        with transaction.atomic():
            author = with_books(Author, 2).exclude(id__in=FIXTURE_AUTHORS).first()
            books, deleted = ids(author.book_set.all()), ids([author])
            author.delete()
        self.emit(path, "author (their books, with links and reviews)", authors=deleted, books=books)

    def path_queryset_delete(self):
        path = "queryset_delete"
        books = self.books(path, 4, tags=1, reviews=1)
        deleted, reviewed, unlinked = books[:2], books[2], books[3]
        with transaction.atomic():
            Book.objects.filter(id__in=[b.id for b in deleted]).delete()
        self.emit(path, "books", books=ids(deleted))
        with transaction.atomic():
            Review.objects.filter(book=reviewed).delete()
        self.emit(path, "reviews of a book", books=ids([reviewed]))
        with transaction.atomic():
            BookTag.objects.filter(book=unlinked).delete()
        self.emit(path, "links of a book", books=ids([unlinked]))
        with transaction.atomic():
            tags = list(with_books(Tag).exclude(id__in=FIXTURE_TAGS)[:1])
            books = ids(Book.objects.filter(tags__in=tags))
            Tag.objects.filter(id__in=[t.id for t in tags]).delete()
        self.emit(path, "tags", tags=ids(tags), books=books)
        with transaction.atomic():
            country = Country.objects.annotate(n=Count("author")).filter(n__gte=1).exclude(id__in=FIXTURE_COUNTRIES).order_by("-n", "id").first()
            authors = ids(country.author_set.all())
            Country.objects.filter(id=country.id).delete()
        self.emit(path, "country", countries=ids([country]), authors=authors)
        with transaction.atomic():
            authors = list(with_books(Author).exclude(id__in=FIXTURE_AUTHORS)[:2])
            books = ids(books_of_authors(authors))
            Author.objects.filter(id__in=[a.id for a in authors]).delete()
        self.emit(path, "authors (their books, with links and reviews)", authors=ids(authors), books=books)

    def path_loaddata(self):
        # Fixtures keep their own timestamps: loaddata saves raw rows, without auto_now, and sets
        # Book.tags by clearing and adding.
        with transaction.atomic():
            call_command("loaddata", "shelf_edit", verbosity=0)
        self.emit("loaddata", "shelf_edit", books=[1, 100001], countries=FIXTURE_COUNTRIES)

    def path_links_later(self):
        with transaction.atomic():
            author = Author.objects.order_by("id").first()
            book = Book.objects.create(title=f"Links later {self.tag}", author=author)
        self.emit("links_later", "book", books=ids([book]))
        time.sleep(self.pause)
        with transaction.atomic():
            tags = list(Tag.objects.order_by("-id")[:2])
            book.tags.add(*tags)
        self.emit("links_later", "tags", books=ids([book]), tags=ids(tags))
        time.sleep(self.pause)
        with transaction.atomic():
            review = Review.objects.create(book=book, stars=2, body="Later")
        self.emit("links_later", "review", books=ids([book]), reviews=ids([review]))
        time.sleep(self.pause)
        with transaction.atomic():
            book.author = Author.objects.exclude(id=author.id).order_by("-id").first()
            book.save()
        self.emit("links_later", "author", books=ids([book]), authors=ids([book.author]))

    def path_slow_atomic(self):
        first, during, last = self.books("slow_atomic", 3)

        def tag_and_move_its_author(book):
            book.tags.add(Tag.objects.exclude(book=book).order_by("id").first())
            book.author.country = Country.objects.exclude(id=book.author.country_id).order_by("-id").first()
            book.author.save()

        self.slow_transaction(first, during, last, tag_and_move_its_author)
        self.emit("slow_atomic", "one transaction of 3 s and one beside it", books=ids([first, during, last]))
