"""Loaded by Python at start-up (bench/pgsync.sh puts this folder on PYTHONPATH).

The local stack's Elasticsearch 7.10.2 (embedded, tools/search-engine) answers `build_flavor:
"unknown"`, and elasticsearch-py 7.14+ refuses any 7.x server whose flavor is not "default"
(UnsupportedProductError). The server is Elasticsearch 7.10.2 all the same: skip that check.
"""

try:
    from elasticsearch import transport as _transport

    def _skip_product_check(self, headers, timeout):
        self._verified_elasticsearch = True

    _transport.Transport._do_verify_elasticsearch = _skip_product_check
except ImportError:
    pass
