-- What the relay writes in Canvas's database (issue 11). Before, every delivered event was written again (a
-- delivery row, which also locked its outbox row through the foreign key) and deleted again after retention
-- (DELETE, then vacuum), each with its WAL, which replicas and backups carry too. Now:
-- - A first-attempt success writes no row of its own: one appointment_relay.delivery_batch row per recorded
--   batch says which events it settled (ranges of ids) and when; batch records are dropped with their
--   outbox partition. Retried, dead and replayed events keep
--   their delivery rows, which now hold no foreign key (the outbox loses whole partitions at once).
-- - The outbox is partitioned by id range; retention drops a partition once every endpoint is past it and
--   its newest row is older than the retention (appointment_relay.drop_partition): no DELETE, no dead tuple.
--   Dead letters in it are copied to appointment_relay.outbox_kept first; a partition holding retrying or
--   replayed events waits.
-- - The captured_at index is gone: retention no longer searches by time. One index fewer per captured row.
--
-- The existing outbox becomes the first partition, outbox_p0, as it is (nothing is copied); new ids continue
-- from its identity sequence. Partitions ahead of the ids are made by the daemon
-- (appointment_relay.add_partitions); ids beyond them land in outbox_default, which is emptied by TRUNCATE
-- when every endpoint is done with it, so a Canvas write never fails for want of a partition.
--
-- Both maintenance functions run as the schema's owner (they create, attach and drop tables, which only the
-- owner may) and take their locks with lock_timeout: a partition is attached under SHARE UPDATE EXCLUSIVE,
-- which Canvas's inserts do not wait for; a drop needs ACCESS EXCLUSIVE on the outbox for a moment and gives
-- up after 100 ms when a transaction holds it (tried again at the next purge).

-- The delivery rows of retried, dead and replayed events: no foreign key any more.
DO $$
DECLARE
  fk text;
BEGIN
  FOR fk IN
    SELECT conname FROM pg_catalog.pg_constraint
    WHERE conrelid = 'appointment_relay.delivery'::regclass AND contype = 'f'
  LOOP
    EXECUTE pg_catalog.format('ALTER TABLE appointment_relay.delivery DROP CONSTRAINT %I', fk);
  END LOOP;
END
$$;

-- Revokes every right on a table held by someone other than its owner (PUBLIC included): the outbox and its
-- partitions are written only by the capture triggers and the maintenance functions, which run as the owner.
CREATE FUNCTION appointment_relay.owner_only(target regclass, keep text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  grantee_name text;
  privilege text;
BEGIN
  FOR grantee_name, privilege IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type
    FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
    WHERE c.oid = target AND a.grantee <> c.relowner AND NOT (a.privilege_type = ANY (keep))
  LOOP
    EXECUTE pg_catalog.format('REVOKE %s ON %s FROM %s', privilege, target, grantee_name);
  END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION appointment_relay.owner_only(regclass, text[]) FROM PUBLIC;

DO $$
DECLARE
  next_id bigint;
  grantee_name text;
  privilege text;
BEGIN
  SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END INTO next_id
  FROM appointment_relay.outbox_id_seq s;

  ALTER TABLE appointment_relay.outbox RENAME TO outbox_p0;
  ALTER INDEX appointment_relay.outbox_pkey RENAME TO outbox_p0_pkey;
  DROP INDEX appointment_relay.outbox_captured_at;
  ALTER TABLE appointment_relay.outbox_p0 ALTER COLUMN id DROP IDENTITY;

  EXECUTE pg_catalog.format('CREATE SEQUENCE appointment_relay.outbox_id AS bigint START WITH %s', next_id);
  CREATE TABLE appointment_relay.outbox (
    id bigint NOT NULL DEFAULT pg_catalog.nextval('appointment_relay.outbox_id'),
    captured_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    source_table text NOT NULL,
    operation text NOT NULL,
    row_id integer NOT NULL,
    state text,
    appointment_id integer,
    appointment_external_id text,
    rescheduled_from_id integer,
    start_time timestamptz,
    duration_minutes integer,
    entered_in_error boolean,
    patient_id integer,
    patient_key text,
    ordering_key text,
    PRIMARY KEY (id)
  ) PARTITION BY RANGE (id);
  ALTER SEQUENCE appointment_relay.outbox_id OWNED BY appointment_relay.outbox.id;
  EXECUTE pg_catalog.format(
    'ALTER TABLE appointment_relay.outbox ATTACH PARTITION appointment_relay.outbox_p0 FOR VALUES FROM (MINVALUE) TO (%s)',
    next_id);
  CREATE TABLE appointment_relay.outbox_default PARTITION OF appointment_relay.outbox DEFAULT;

  -- Whoever read or purged the old outbox (the daemon's role) reads and purges the new one: SELECT and
  -- DELETE carried over. INSERT and UPDATE stay the owner's (migration 0003), whatever default privileges
  -- gave the new table.
  FOR grantee_name, privilege IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type
    FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
    WHERE c.oid = 'appointment_relay.outbox_p0'::regclass AND a.grantee <> c.relowner
      AND a.privilege_type IN ('SELECT', 'DELETE')
  LOOP
    EXECUTE pg_catalog.format('GRANT %s ON appointment_relay.outbox TO %s', privilege, grantee_name);
  END LOOP;
  PERFORM appointment_relay.owner_only('appointment_relay.outbox', ARRAY['SELECT', 'DELETE']);
  -- Partitions are read through the outbox (its rights are the ones checked), never directly.
  PERFORM appointment_relay.owner_only('appointment_relay.outbox_p0', ARRAY[]::text[]);
  PERFORM appointment_relay.owner_only('appointment_relay.outbox_default', ARRAY[]::text[]);
END
$$;
-- Dead letters whose partition was dropped: the same columns, written only by drop_partition.
CREATE TABLE appointment_relay.outbox_kept (LIKE appointment_relay.outbox INCLUDING DEFAULTS);
ALTER TABLE appointment_relay.outbox_kept ADD PRIMARY KEY (id);
SELECT appointment_relay.owner_only('appointment_relay.outbox_kept', ARRAY['SELECT']);

-- What each recorded batch settled for an endpoint without a delivery row of its own: the events delivered
-- on their first attempt. done_ids holds inclusive ranges as pairs [lo1, hi1, lo2, hi2, ...]; first_id and
-- last_id bound them. Partitioned like the outbox, on first_id, with the same bounds: a batch record goes with
-- the outbox partition its first event is in (drop_partition drops both; nothing is deleted row by row). A
-- record that reaches into the next partition loses that part with it; that part is below every endpoint's
-- watermark by then, so nothing reads it again.
CREATE TABLE appointment_relay.delivery_batch (
  endpoint text NOT NULL,
  first_id bigint NOT NULL,
  last_id bigint NOT NULL,
  done_ids bigint[] NOT NULL,
  first_at timestamptz NOT NULL,
  last_at timestamptz NOT NULL
) PARTITION BY RANGE (first_id);
CREATE INDEX delivery_batch_endpoint_last_id ON appointment_relay.delivery_batch (endpoint, last_id);
CREATE TABLE appointment_relay.delivery_batch_default PARTITION OF appointment_relay.delivery_batch DEFAULT;
DO $$
BEGIN
  EXECUTE pg_catalog.format(
    'CREATE TABLE appointment_relay.delivery_batch_p0 PARTITION OF appointment_relay.delivery_batch'
    ' FOR VALUES FROM (MINVALUE) TO (%s)',
    (SELECT substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''?(-?[0-9]+)''?\)')
     FROM pg_catalog.pg_class c WHERE c.oid = 'appointment_relay.outbox_p0'::regclass));
END
$$;

-- Every delivered event, however it was recorded: for status, tests and an event's history.
CREATE VIEW appointment_relay.delivered_events AS
SELECT d.endpoint, d.event_id, d.delivered_at, d.attempts
FROM appointment_relay.delivery d
WHERE d.state = 'delivered'
UNION ALL
SELECT b.endpoint, e.event_id, b.last_at, 1
FROM appointment_relay.delivery_batch b,
     generate_series(1, cardinality(b.done_ids) - 1, 2) AS r(i),
     generate_series(b.done_ids[r.i], b.done_ids[r.i + 1]) AS e(event_id);

-- The daemon's rights on the new tables are those it has on delivery (default privileges give them too
-- where sql/privileges.sql was followed); outbox_kept is read only.
DO $$
DECLARE
  grantee_name text;
  privilege text;
BEGIN
  FOR grantee_name, privilege IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type
    FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
    WHERE c.oid = 'appointment_relay.delivery'::regclass AND a.grantee <> c.relowner
      AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
  LOOP
    EXECUTE pg_catalog.format('GRANT %s ON appointment_relay.delivery_batch TO %s', privilege, grantee_name);
    IF privilege = 'SELECT' THEN
      EXECUTE pg_catalog.format('GRANT SELECT ON appointment_relay.outbox_kept TO %s', grantee_name);
      EXECUTE pg_catalog.format('GRANT SELECT ON appointment_relay.delivered_events TO %s', grantee_name);
    END IF;
  END LOOP;
END
$$;

-- The range partitions, in order: name, first id (NULL: MINVALUE) and end (exclusive).
CREATE FUNCTION appointment_relay.outbox_partitions()
RETURNS TABLE (name text, first_id bigint, end_id bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT c.relname::text,
         substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''?(-?[0-9]+)''?\)')::bigint,
         substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''?(-?[0-9]+)''?\)')::bigint
  FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
  WHERE i.inhparent = 'appointment_relay.outbox'::regclass
    AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
  ORDER BY 3
$$;

-- Makes range partitions of `width` ids until `ahead` of them lie beyond the next id. When ids have run past
-- the last partition (into outbox_default), the next one starts a little beyond the next id. Returns how
-- many it made. Fails (lock_timeout, or an id landing in the new range meanwhile) without harm: the caller
-- tries again later.
CREATE FUNCTION appointment_relay.add_partitions(width bigint, ahead integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  next_id bigint;
  top bigint;
  lo bigint;
  made integer := 0;
  part text;
BEGIN
  IF width < 1 OR ahead < 1 THEN
    RAISE EXCEPTION 'add_partitions: width and ahead must be positive';
  END IF;
  PERFORM set_config('lock_timeout', '100ms', true);
  SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END INTO next_id
  FROM appointment_relay.outbox_id s;
  SELECT coalesce(max(p.end_id), next_id) INTO top FROM appointment_relay.outbox_partitions() p;
  lo := greatest(top, coalesce((SELECT max(d.id) + 1 FROM appointment_relay.outbox_default d), top));
  IF lo < next_id THEN
    lo := next_id + least(width, 10000);  -- room for the ids taken while this runs
  END IF;
  WHILE lo < next_id + width * ahead AND made <= ahead LOOP
    part := 'outbox_p' || lo;
    EXECUTE format('CREATE TABLE appointment_relay.%I (LIKE appointment_relay.outbox INCLUDING DEFAULTS)', part);
    EXECUTE format('ALTER TABLE appointment_relay.outbox ATTACH PARTITION appointment_relay.%I'
                   ' FOR VALUES FROM (%s) TO (%s)', part, lo, lo + width);
    PERFORM appointment_relay.owner_only(format('appointment_relay.%I', part)::regclass, ARRAY[]::text[]);
    -- The batch records of the same ids.
    part := 'delivery_batch_p' || lo;
    EXECUTE format('CREATE TABLE appointment_relay.%I (LIKE appointment_relay.delivery_batch)', part);
    EXECUTE format('ALTER TABLE appointment_relay.delivery_batch ATTACH PARTITION appointment_relay.%I'
                   ' FOR VALUES FROM (%s) TO (%s)', part, lo, lo + width);
    lo := lo + width;
    made := made + 1;
  END LOOP;
  RETURN made;
END
$$;

-- Removes the oldest partition (or empties outbox_default) when every listed endpoint is past all its rows,
-- its newest row is older than `retention`, and none of its events is retrying or replayed anywhere. Dead
-- letters in it are copied to outbox_kept first; its batch records and its delivered events' delivery rows go
-- with it. Returns the outbox rows removed (0 for an empty partition), NULL when nothing may go now. One
-- partition per call, so that a call that cannot take its lock undoes little; the caller calls again until
-- NULL.
CREATE FUNCTION appointment_relay.drop_partition(endpoints text[], retention interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  done_floor bigint;
  p record;
  newest timestamptz;
  removed bigint;
  lo bigint;
  hi bigint;
BEGIN
  IF coalesce(cardinality(endpoints), 0) = 0 THEN
    RETURN NULL;
  END IF;
  PERFORM set_config('lock_timeout', '100ms', true);
  SELECT min(coalesce(c.done_through, 0)) INTO done_floor
  FROM unnest(endpoints) AS e(endpoint)
  LEFT JOIN appointment_relay.endpoint_cursor c ON c.endpoint = e.endpoint;

  -- Dead letters kept apart that were replayed and delivered since.
  DELETE FROM appointment_relay.outbox_kept k
  WHERE k.captured_at < now() - retention
    AND NOT EXISTS (SELECT 1 FROM appointment_relay.delivery d
                    WHERE d.event_id = k.id AND d.state IN ('dead', 'replay', 'retrying'));

  FOR p IN SELECT * FROM appointment_relay.outbox_partitions() ORDER BY end_id LOOP
    EXIT WHEN p.end_id - 1 > done_floor;
    -- The newest row by its clock, not by its id: a transaction may commit an older id later.
    EXECUTE format('SELECT max(captured_at) FROM appointment_relay.%I', p.name) INTO newest;
    CONTINUE WHEN newest IS NOT NULL AND newest >= now() - retention;
    lo := coalesce(p.first_id, -9223372036854775808);
    hi := p.end_id - 1;
    CONTINUE WHEN EXISTS (SELECT 1 FROM appointment_relay.delivery d
                          WHERE d.event_id BETWEEN lo AND hi AND d.state IN ('retrying', 'replay'));
    -- Every id up to done_floor is committed (the watermark never passes a row that may still appear):
    -- nothing is added to this range, so the copy and the count need no lock; the drop takes it, briefly.
    EXECUTE format('INSERT INTO appointment_relay.outbox_kept SELECT o.* FROM appointment_relay.%I o'
                   ' WHERE EXISTS (SELECT 1 FROM appointment_relay.delivery d'
                   '               WHERE d.event_id = o.id AND d.state = ''dead'')'
                   ' ON CONFLICT (id) DO NOTHING', p.name);
    DELETE FROM appointment_relay.delivery d WHERE d.event_id BETWEEN lo AND hi AND d.state = 'delivered';
    EXECUTE format('SELECT count(*) FROM appointment_relay.%I', p.name) INTO removed;
    EXECUTE format('DROP TABLE appointment_relay.%I', p.name);
    -- Its batch records (history kept as long as the events).
    EXECUTE format('DROP TABLE IF EXISTS appointment_relay.%I', 'delivery_batch_p' || substr(p.name, 9));
    RETURN removed;
  END LOOP;

  -- Ids beyond the partitions: emptied at once when all of them may go.
  SELECT max(d.id), max(d.captured_at), count(*) INTO hi, newest, removed FROM appointment_relay.outbox_default d;
  IF removed > 0 AND hi <= done_floor AND newest < now() - retention
     AND NOT EXISTS (SELECT 1 FROM appointment_relay.outbox_default o
                     JOIN appointment_relay.delivery d ON d.event_id = o.id
                     WHERE d.state IN ('retrying', 'replay')) THEN
    INSERT INTO appointment_relay.outbox_kept SELECT o.* FROM appointment_relay.outbox_default o
    WHERE EXISTS (SELECT 1 FROM appointment_relay.delivery d WHERE d.event_id = o.id AND d.state = 'dead')
    ON CONFLICT (id) DO NOTHING;
    DELETE FROM appointment_relay.delivery d
    USING appointment_relay.outbox_default o WHERE d.event_id = o.id AND d.state = 'delivered';
    TRUNCATE appointment_relay.outbox_default, appointment_relay.delivery_batch_default;
    RETURN removed;
  END IF;
  RETURN NULL;
END
$$;

-- The maintenance functions: for whoever may purge the outbox (the daemon's role), nobody else.
REVOKE EXECUTE ON FUNCTION appointment_relay.add_partitions(bigint, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION appointment_relay.drop_partition(text[], interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION appointment_relay.outbox_partitions() FROM PUBLIC;
DO $$
DECLARE
  grantee_name text;
BEGIN
  FOR grantee_name IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
    FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
    WHERE c.oid = 'appointment_relay.outbox'::regclass AND a.grantee <> c.relowner AND a.privilege_type = 'DELETE'
  LOOP
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION appointment_relay.add_partitions(bigint, integer) TO %s',
                              grantee_name);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION appointment_relay.drop_partition(text[], interval) TO %s',
                              grantee_name);
  END LOOP;
END
$$;

-- The first partitions, so that Canvas's writes between this migration and the daemon's start have theirs.
SELECT appointment_relay.add_partitions(100000, 2);
