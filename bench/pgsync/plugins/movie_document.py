"""PGSync plugin: PGSync's nested rows -> the document pg2es writes (the `movies` mapping)."""

from pgsync import plugin


class MovieDocument(plugin.Plugin):
    name = "MovieDocument"

    def transform(self, doc, **kwargs):
        links = doc.get("person_film_work") or []

        def people(role):
            # As pg2es: one entry per person, ordered by name, then id.
            found = {}
            for link in links:
                person = link.get("person") or {}
                if link.get("role") == role and person.get("full_name"):
                    found[person["id"]] = {"id": person["id"], "name": person["full_name"]}
            return sorted(found.values(), key=lambda p: (p["name"], p["id"]))

        directors, actors, writers = people("director"), people("actor"), people("writer")
        # `_meta` (PGSync's record of which rows built the document) is left out: the strict
        # mapping has no such field.
        return {
            "id": doc["id"],
            "imdb_rating": doc.get("rating"),
            "genre": sorted(set(doc.get("genre") or [])),
            "title": doc.get("title"),
            "description": doc.get("description"),
            "director": [p["name"] for p in directors],
            "actors_names": [p["name"] for p in actors],
            "writers_names": [p["name"] for p in writers],
            "actors": actors,
            "writers": writers,
        }
