#!/bin/sh
# Creates the two databases the compose stack needs: "hapi" (HAPI FHIR JPA) and
# "careloop" (careloop's own store). Run once by the postgres image on first start
# (mounted into /docker-entrypoint-initdb.d). Sandbox-only credentials.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-SQL
	CREATE USER hapi WITH PASSWORD 'hapi';
	CREATE DATABASE hapi OWNER hapi;
	CREATE USER careloop WITH PASSWORD 'careloop';
	CREATE DATABASE careloop OWNER careloop;
SQL
