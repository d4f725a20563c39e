# The compose demo's database: Debian's PostgreSQL 15 with the Canvas demo schema (sql/canvas), built from
# the base image and Debian's packages alone (no image from a registry). Superuser postgres, password "demo";
# port 5432 on every address of the container.
FROM debian:bookworm-slim
RUN apt-get update -q && apt-get install -y -q --no-install-recommends postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY sql/canvas /usr/local/share/canvas-demo
USER postgres
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/demo PGHOST=/tmp
# The schema is made at build time: a container starts with it, nothing to initialise at run time.
RUN echo demo > /tmp/pw \
 && initdb -U postgres --auth-local=trust --auth-host=scram-sha-256 --pwfile=/tmp/pw >/dev/null && rm /tmp/pw \
 && echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf" \
 && pg_ctl -w -l /tmp/init.log -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start >/dev/null \
 && createdb canvas \
 && for f in /usr/local/share/canvas-demo/*.sql; do psql -q -v ON_ERROR_STOP=1 -d canvas -f "$f" >/dev/null; done \
 && pg_ctl -w stop >/dev/null
EXPOSE 5432
CMD ["postgres", "-c", "listen_addresses=*", "-c", "unix_socket_directories=/tmp"]
