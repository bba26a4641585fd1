-- Runs once, on an empty data directory (docker-entrypoint-initdb.d).
-- One database, one schema per service; each service's migrations create its tables.
CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION embedviz;
CREATE SCHEMA IF NOT EXISTS ingest AUTHORIZATION embedviz;
CREATE SCHEMA IF NOT EXISTS embedding AUTHORIZATION embedviz;
CREATE SCHEMA IF NOT EXISTS projection AUTHORIZATION embedviz;
