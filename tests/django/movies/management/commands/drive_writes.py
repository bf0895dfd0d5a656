"""Every way the admin's ORM writes the catalog, one path at a time, each in its own transaction(s).

Prints one JSON line per step: the path, the step and the ids it wrote. Each path picks its films
among those whose id starts with its own hex digit, so paths run one after another do not touch
each other's films (fan-outs through a person or genre excepted).
"""
import time

from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import Count

from catalog_site.paths import PathsCommand
from movies.models import Filmwork, Genre, GenreFilmwork, Person, PersonFilmwork

PATHS = [
    "save",
    "save_update_fields",
    "queryset_update",
    "bulk_create",
    "bulk_update",
    "m2m_add",
    "m2m_remove",
    "m2m_set",
    "delete",
    "queryset_delete",
    "loaddata",
    "links_later",
    "slow_atomic",
    "schema_edges",
]


def ids(objects):
    """Distinct ids in first-seen order (a person is linked to a film once per role)."""
    return list(dict.fromkeys(str(o.pk) for o in objects))


def bucket_of(path):
    return "0123456789abcdef"[PATHS.index(path)]


def persons_of(path, films):
    """Persons of this path's bucket with at least `films` films, fewest first."""
    qs = Person.objects.filter(id__startswith=bucket_of(path)).annotate(n=Count("filmwork", distinct=True))
    return qs.filter(n__gte=films).order_by("n", "id")


class Command(PathsCommand):
    paths = PATHS
    help = "write the catalog through each ORM path; --only PATH (repeatable) to choose"

    def films(self, path, n, **having):
        """n films of this path's bucket, in id order (with links of the kinds asked for)."""
        bucket = bucket_of(path)
        qs = Filmwork.objects.filter(id__startswith=bucket).order_by("id")
        if having.get("genres"):
            qs = qs.annotate(n_genres=Count("genres", distinct=True)).filter(n_genres__gte=having["genres"])
        if having.get("persons"):
            qs = qs.annotate(n_persons=Count("persons", distinct=True)).filter(n_persons__gte=having["persons"])
        found = list(qs[:n])
        if len(found) < n:
            raise CommandError(f"{path}: only {len(found)} films in bucket {bucket!r}, {n} needed")
        return found

    def path_save(self):
        with transaction.atomic():
            film = self.films("save", 1)[0]
            film.title = f"Saved {self.tag}"
            film.rating = 4.2
            film.save()
        self.emit("save", "film", films=ids([film]))
        with transaction.atomic():
            genre = Genre.objects.order_by("id").first()
            genre.name = f"{genre.name.split(' #')[0]} #{self.tag}"
            genre.save()
        self.emit("save", "genre", genres=ids([genre]))

    def path_save_update_fields(self):
        with transaction.atomic():
            film = self.films("save_update_fields", 1)[0]
            film.title = f"Title only {self.tag}"
            film.save(update_fields=["title"])
        self.emit("save_update_fields", "film title", films=ids([film]))

    def path_queryset_update(self):
        with transaction.atomic():
            busy = persons_of("queryset_update", 8).first()
            Person.objects.filter(id=busy.id).update(full_name=f"Renamed {self.tag}")
        self.emit("queryset_update", "person rename", persons=ids([busy]), films=ids(busy.filmwork_set.all()))
        film, other = self.films("queryset_update", 2, persons=1)
        with transaction.atomic():
            Filmwork.objects.filter(id=film.id).update(rating=9.8 if film.rating == 9.9 else 9.9)
        self.emit("queryset_update", "rating", films=ids([film]))
        with transaction.atomic():
            link = PersonFilmwork.objects.filter(film_work=other).order_by("id").first()
            role = "writer" if link.role != "writer" else "director"
            PersonFilmwork.objects.filter(id=link.id).update(role=role)
        self.emit("queryset_update", "role", films=ids([other]), links=ids([link]))

    def path_bulk_create(self):
        genres = list(Genre.objects.order_by("id")[:2])
        persons = list(Person.objects.order_by("id")[:3])
        with transaction.atomic():
            films = Filmwork.objects.bulk_create(
                [Filmwork(title=f"Bulk created {i} {self.tag}", rating=5.0 + i, type="movie") for i in range(3)]
            )
            GenreFilmwork.objects.bulk_create([GenreFilmwork(film_work=f, genre=g) for f in films for g in genres])
            PersonFilmwork.objects.bulk_create(
                [PersonFilmwork(film_work=f, person=p, role=r) for f in films for p, r in zip(persons, ["actor", "director", "writer"])]
            )
        self.emit("bulk_create", "films and links", films=ids(films))

    def path_bulk_update(self):
        with transaction.atomic():
            films = self.films("bulk_update", 3)
            for i, f in enumerate(films):
                f.title = f"Bulk updated {i} {self.tag}"
                f.rating = 1.5 + i
            Filmwork.objects.bulk_update(films, ["title", "rating"])
        self.emit("bulk_update", "films", films=ids(films))

    def path_m2m_add(self):
        film = self.films("m2m_add", 1)[0]
        with transaction.atomic():
            genre = Genre.objects.exclude(filmwork=film).order_by("id").first()
            film.genres.add(genre)
        self.emit("m2m_add", "genre", films=ids([film]), genres=ids([genre]))
        with transaction.atomic():
            person = Person.objects.exclude(filmwork=film).order_by("id").first()
            film.persons.add(person, through_defaults={"role": "actor"})
        self.emit("m2m_add", "person", films=ids([film]), persons=ids([person]))

    def path_m2m_remove(self):
        film = self.films("m2m_remove", 1, genres=2, persons=2)[0]
        with transaction.atomic():
            genre = film.genres.order_by("id").first()
            film.genres.remove(genre)
        self.emit("m2m_remove", "genre", films=ids([film]), genres=ids([genre]))
        with transaction.atomic():
            person = film.persons.order_by("id").first()
            film.persons.remove(person)
        self.emit("m2m_remove", "person", films=ids([film]), persons=ids([person]))

    def path_m2m_set(self):
        film = self.films("m2m_set", 1, genres=1, persons=1)[0]
        with transaction.atomic():
            kept = film.genres.order_by("id").first()
            new = Genre.objects.exclude(filmwork=film).order_by("id").first()
            film.genres.set([kept, new])
        self.emit("m2m_set", "genres", films=ids([film]), genres=ids([kept, new]))
        with transaction.atomic():
            new = list(Person.objects.exclude(filmwork=film).order_by("id")[:2])
            film.persons.set(new, through_defaults={"role": "writer"})
        self.emit("m2m_set", "persons", films=ids([film]), persons=ids(new))

    def path_delete(self):
        # Deletes cascade in the ORM: Django deletes the link rows, then the row itself.
        film = self.films("delete", 1, genres=1, persons=1)[0]
        with transaction.atomic():
            films = ids([film])
            film.delete()
        self.emit("delete", "film", films=films)
        with transaction.atomic():
            genre = Genre.objects.annotate(n=Count("filmwork")).filter(n__gte=1).order_by("n", "id").first()
            films = ids(genre.filmwork_set.all())
            genres = ids([genre])
            genre.delete()
        self.emit("delete", "genre", genres=genres, films=films)
        with transaction.atomic():
            person = persons_of("delete", 2).first()
            films = ids(person.filmwork_set.all())
            persons = ids([person])
            person.delete()
        self.emit("delete", "person", persons=persons, films=films)

    def path_queryset_delete(self):
        films = self.films("queryset_delete", 3, persons=2)
        with transaction.atomic():
            Filmwork.objects.filter(id__in=[f.id for f in films[:2]]).delete()
        self.emit("queryset_delete", "films", films=ids(films[:2]))
        with transaction.atomic():
            link = PersonFilmwork.objects.filter(film_work=films[2]).order_by("id").first()
            PersonFilmwork.objects.filter(film_work=films[2], role=link.role).delete()
        self.emit("queryset_delete", "links of a role", films=ids(films[2:]))

    def path_loaddata(self):
        # Fixtures keep their own timestamps: loaddata saves raw rows, without auto_now.
        with transaction.atomic():
            call_command("loaddata", "catalog_edit", verbosity=0)
        self.emit("loaddata", "catalog_edit", films=["a0d1a0d1-0000-4000-8000-000000000001", "a010b701-9a46-4a23-aa5d-b029c18353dd"])

    def path_links_later(self):
        with transaction.atomic():
            film = Filmwork.objects.create(title=f"Links later {self.tag}", type="movie")
        self.emit("links_later", "film", films=ids([film]))
        time.sleep(self.pause)
        with transaction.atomic():
            genres = list(Genre.objects.order_by("-id")[:2])
            film.genres.add(*genres)
        self.emit("links_later", "genres", films=ids([film]), genres=ids(genres))
        time.sleep(self.pause)
        with transaction.atomic():
            person = Person.objects.order_by("-id").first()
            film.persons.add(person, through_defaults={"role": "director"})
        self.emit("links_later", "person", films=ids([film]), persons=ids([person]))

    def path_slow_atomic(self):
        first, during, last = self.films("slow_atomic", 3)

        def link_a_genre(film):
            film.genres.add(Genre.objects.exclude(filmwork=film).order_by("id").first())

        self.slow_transaction(first, during, last, link_a_genre)
        self.emit("slow_atomic", "one transaction of 3 s and one beside it", films=ids([first, during, last]))

    def path_schema_edges(self):
        # What Django's schema allows and sql/schema.sql does not: a NULL role and a genre linked
        # twice, kept on one film; on another, a delete cascading in the ORM through both.
        kept, deleted = self.films("schema_edges", 2, genres=1)
        for film in (kept, deleted):
            with transaction.atomic():
                person = Person.objects.exclude(filmwork=film).order_by("id").first()
                PersonFilmwork.objects.create(film_work=film, person=person, role=None)
            self.emit("schema_edges", "role NULL", films=ids([film]), persons=ids([person]))
            with transaction.atomic():
                genre = film.genres.order_by("id").first()
                GenreFilmwork.objects.create(film_work=film, genre=genre)
            self.emit("schema_edges", "genre linked twice", films=ids([film]), genres=ids([genre]))
        films = ids([deleted])
        with transaction.atomic():
            deleted.delete()
        self.emit("schema_edges", "film deleted", films=films)
