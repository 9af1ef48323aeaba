"""The data subjects' rights: a request as received and as it runs (``requests``), run by
``subject_rights`` through one module per step: found (``find``), decided (``decide``, ``ends``),
exported (``access``) or erased (``erase``, ``erase_archived``) across the live database and the
archive, with its evidence (``evidence``) and report (``report``), sharing ``context``; the
marketing suppression list (``suppression``) and the expiry of access exports (``exports``).
"""
