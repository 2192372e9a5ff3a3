-- Runs once, when the timescaledb service initializes an empty data volume (after the image's own
-- scripts, which install TimescaleDB into the market data database named by POSTGRES_DB).
-- Creates the separate database that holds Dagster's run, event log and schedule storage
-- (DAGSTER_PG_DB in docker-compose.yml), owned by the same user. It is cloned from template0 so it
-- stays a plain PostgreSQL database without the TimescaleDB extension.
SELECT 'CREATE DATABASE dagster TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'dagster')\gexec
