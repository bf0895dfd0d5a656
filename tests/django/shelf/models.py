"""A bookshelf written the way `startapp` leaves an app: Django's defaults everywhere.

No explicit keys (`DEFAULT_AUTO_FIELD` is `BigAutoField`: `id bigint` identity), default table
names (`shelf_book`) in the connection's default schema (`public`), and a `ManyToManyField`
whose link table Django creates itself (`shelf_book_tags`: `id bigint`, `book_id`, `tag_id`,
unique on the pair, no timestamp). Each model of the app records its changes in `updated_at`.
"""
from django.db import models


class Country(models.Model):
    name = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)


class Author(models.Model):
    name = models.TextField()
    # The author stays when the country goes: the ORM sets country_id to NULL.
    country = models.ForeignKey(Country, null=True, blank=True, on_delete=models.SET_NULL)
    updated_at = models.DateTimeField(auto_now=True)


class Tag(models.Model):
    name = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)


class Book(models.Model):
    title = models.TextField()
    # Deleting an author deletes their books, with their reviews and tag links (in the ORM).
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    tags = models.ManyToManyField(Tag, blank=True)
    updated_at = models.DateTimeField(auto_now=True)


class Review(models.Model):
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="reviews")
    stars = models.SmallIntegerField()
    body = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)
