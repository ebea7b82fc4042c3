"""``tlkit audit``: what is wrong with a dataset before it costs accuracy.

Exact and near duplicates (leaks across splits), likely label errors, outliers, odd files and class balance,
from the features extraction caches (extracted once, reused after); nothing is moved or deleted.

    result = tlkit.audit("photos/")   # -> AuditResult: findings, balance, leaks

:mod:`tlkit.auditing.auditor` runs it; :mod:`tlkit.auditing.findings` holds what it finds and its thresholds;
:mod:`tlkit.auditing.page` and :mod:`tlkit.auditing.fix` write the HTML page and the fixed split.
"""
