"""The projection service: 2-D and 3-D maps of embeddings, clusters and their labels,
points for the browser, search and neighbours."""
