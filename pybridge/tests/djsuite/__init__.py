"""Running Django's own test suite against the ``litefs.django`` backend (see
``pybridge/tests/run_django_suite.py``)."""
