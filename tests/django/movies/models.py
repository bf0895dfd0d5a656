"""The catalog's models, as the course's admin has them. Tables live in schema `content`."""
import uuid

from django.db import models


class UUIDMixin(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)

    class Meta:
        abstract = True


class TimeStampedMixin(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Genre(UUIDMixin, TimeStampedMixin):
    name = models.TextField()
    description = models.TextField(blank=True, null=True)

    class Meta:
        db_table = 'content"."genre'


class Person(UUIDMixin, TimeStampedMixin):
    full_name = models.TextField()

    class Meta:
        db_table = 'content"."person'


class Filmwork(UUIDMixin, TimeStampedMixin):
    class Type(models.TextChoices):
        MOVIE = "movie"
        TV_SHOW = "tv_show"

    title = models.TextField()
    description = models.TextField(blank=True, null=True)
    creation_date = models.DateTimeField(blank=True, null=True)
    rating = models.FloatField(blank=True, null=True)
    type = models.TextField(choices=Type.choices, blank=True, null=True)
    genres = models.ManyToManyField(Genre, through="GenreFilmwork")
    persons = models.ManyToManyField(Person, through="PersonFilmwork")

    class Meta:
        db_table = 'content"."film_work'


# No unique (film_work, genre) and a nullable role: what the admin's migrations made.
class GenreFilmwork(UUIDMixin, TimeStampedMixin):
    film_work = models.ForeignKey(Filmwork, on_delete=models.CASCADE)
    genre = models.ForeignKey(Genre, on_delete=models.CASCADE)

    class Meta:
        db_table = 'content"."genre_film_work'


class PersonFilmwork(UUIDMixin, TimeStampedMixin):
    film_work = models.ForeignKey(Filmwork, on_delete=models.CASCADE)
    person = models.ForeignKey(Person, on_delete=models.CASCADE)
    role = models.TextField(null=True)

    class Meta:
        db_table = 'content"."person_film_work'
