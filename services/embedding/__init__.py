"""The embedding service: models, embedding jobs, vectors and text-to-vector."""
