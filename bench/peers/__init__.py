"""The peers measured against Baton in the same run: Celery and DBOS, each on its real package."""
