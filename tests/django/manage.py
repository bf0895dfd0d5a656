#!/usr/bin/env python
"""The catalog's Django project, as its admin uses it: migrations and ORM writes for tests/django.rs."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catalog_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
