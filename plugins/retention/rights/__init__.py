"""The data subjects' rights: a request as received (``requests``), found, decided, exported and
erased across the live database and the archive (``subject_rights``), the marketing suppression
list (``suppression``) and the expiry of access exports (``exports``).
"""
