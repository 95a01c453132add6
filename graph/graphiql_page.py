"""The GraphiQL page the endpoint serves in development, built from this server's own assets."""

from __future__ import annotations

# GraphiQL's page: its script and stylesheet are built from npm (web/graphiql) and served by
# this app under /static/graphiql, so it works offline; nothing inline, for a strict CSP.
GRAPHIQL_HTML = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Parley GraphiQL</title>
    <link rel="stylesheet" href="/static/graphiql/graphiql.css">
  </head>
  <body>
    <div id="graphiql">Loading...</div>
    <script src="/static/graphiql/graphiql.js"></script>
  </body>
</html>
"""
