"""The broker's HTTP routes, one module per resource; each module's ``routes(http)`` lists them."""
