"""What the write drivers (movies' drive_writes, shelf's drive_shelf_writes) share: a command that
runs its paths one at a time and prints one JSON line per step, and the slow-transaction path."""
import json
import threading
import time

from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.utils import timezone


class PathsCommand(BaseCommand):
    """Runs `path_<name>` for each name of `paths` (or those `--only` names), in order."""

    paths = []

    def add_arguments(self, parser):
        parser.add_argument("--only", action="append", choices=self.paths, help="run only this path (repeatable)")
        parser.add_argument("--pause", type=float, default=1.0, help="seconds between transactions that a path splits")
        parser.add_argument("--list", action="store_true", help="print the paths, one a line, and write nothing")

    def handle(self, *args, **options):
        if options["list"]:
            self.stdout.write("\n".join(self.paths))
            return
        self.pause = options["pause"]
        # New values differ at every run, so a second run changes the documents again.
        self.tag = timezone.now().strftime("%H%M%S%f")
        for path in options["only"] or self.paths:
            getattr(self, "path_" + path)()

    def emit(self, path, step, **written):
        self.stdout.write(json.dumps({"path": path, "step": step, **written}))
        self.stdout.flush()

    def slow_transaction(self, first, during, last, also):
        """Retitles `first`, then `last` 3 s later, in one transaction, while another session
        retitles and commits `during`; `also(first)` writes more in the slow transaction."""

        def other_session():
            try:
                with transaction.atomic():
                    during.title = f"Committed during a slow transaction {self.tag}"
                    during.save()
            finally:
                connection.close()

        with transaction.atomic():
            first.title = f"Written before the sleep {self.tag}"
            first.save()
            writer = threading.Thread(target=other_session)
            writer.start()
            writer.join(timeout=30)
            time.sleep(3)
            last.title = f"Written after the sleep {self.tag}"
            last.save()
            also(first)
