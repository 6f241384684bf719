"""The falcon WSGI app: resources, SSE writers, body validation and the error envelope."""
