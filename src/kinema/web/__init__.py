"""The browser playground: a static page at `/` that is just another client of the public /v1 API."""
