"""The curators' web console (FastAPI + Jinja2): see app.py."""
