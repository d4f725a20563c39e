-- A NOTIFY only when the relay waits for one (issue 11, what the relay costs Canvas's database).
--
-- A transaction that has called pg_notify takes, at commit, a lock that PostgreSQL holds for the whole
-- cluster until the commit is flushed: every notifying transaction commits alone, one flush each, where
-- transactions without it share flushes (group commit). With the capture triggers notifying on every
-- captured row, Canvas's writes of appointments and note states commit one at a time: measured with pgbench
-- (durable commits, 8 clients), the triggers cut the insert rate to a fifth; the same triggers without the
-- pg_notify to about three quarters (bench/results/notes.md, "Issue 11").
--
-- The active relay now says whether it wants notifications, in `listening`: 1 or 2 while it waits for them,
-- 0 while it reads on its own timer (it does when changes come faster than a few hundred per second, where
-- the notifications would serialize the most commits; below that, each change still wakes it at once).
-- The triggers read it after their insert, and notify unless it is 0. A transaction that read 0 is found by
-- the relay's reads without a notification: before it waits again, the relay sets 2, reads the next
-- transaction id to be assigned, and reads again once every transaction below it has ended (each trigger
-- takes its transaction id first, before it reads `listening`, so every one that read 0 is below it); then
-- it sets 1: no transaction can be left that skipped its notification, and a relay starting later need not
-- check again.
--
-- A sequence, not a table row: setval and reading it are not transactional, so the change is seen at once
-- by every session and writes no row version; and a function call, not a query, in the triggers (PL/pgSQL
-- evaluates it without starting an executor). It starts at 1: a relay built before this migration, or none
-- yet, gets every notification as before.
CREATE SEQUENCE appointment_relay.listening MINVALUE 0 MAXVALUE 2 START WITH 1 NO CYCLE;
SELECT pg_catalog.setval('appointment_relay.listening', 1, true);

-- Called by the active relay: 0 when it reads on its timer, 2 before it waits for notifications, 1 once no
-- transaction can be left that skipped one. False when asked for 2 while it is 1 already: it stays 1, there
-- is nothing to wait for. The caller reads the next transaction id to be assigned in a statement of its own
-- after this one, so from a snapshot taken after the change for certain (one taken at the start of the
-- statement calling this would miss a transaction that got its id while this ran and read 0). Runs as the
-- owner: the daemon's role gets EXECUTE, no right on the sequence itself.
CREATE FUNCTION appointment_relay.set_listening(state integer) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF state = 2 AND pg_catalog.pg_sequence_last_value('appointment_relay.listening') = 1 THEN
    RETURN false;
  END IF;
  PERFORM pg_catalog.setval('appointment_relay.listening', state, true);
  RETURN true;
END
$$;
REVOKE EXECUTE ON FUNCTION appointment_relay.set_listening(integer) FROM PUBLIC;

-- The capture functions as in 0001, but for the pg_notify, now conditional. CREATE OR REPLACE keeps their
-- owner and grants; their attributes are restated (0003: SECURITY DEFINER, a pinned search_path).
CREATE OR REPLACE FUNCTION appointment_relay.capture_appointment() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  event_id bigint;
BEGIN
  PERFORM pg_catalog.txid_current();
  INSERT INTO appointment_relay.outbox (source_table, operation, row_id, appointment_id, appointment_external_id,
                                        rescheduled_from_id, start_time, duration_minutes, entered_in_error,
                                        patient_id, patient_key, ordering_key)
  SELECT TG_TABLE_NAME, TG_OP, NEW.id, NEW.id, NEW.externally_exposable_id::text,
         NEW.appointment_rescheduled_from_id, NEW.start_time, NEW.duration_minutes,
         NEW.entered_in_error_id IS NOT NULL, NEW.patient_id,
         (SELECT p.key::text FROM public.api_patient p WHERE p.id = NEW.patient_id),
         NEW.externally_exposable_id::text
  RETURNING id INTO event_id;
  IF pg_catalog.pg_sequence_last_value('appointment_relay.listening'::pg_catalog.regclass) <> 0 THEN
    PERFORM pg_catalog.pg_notify('appointment_relay', event_id::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION appointment_relay.capture_note_state() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  event_id bigint;
BEGIN
  PERFORM pg_catalog.txid_current();
  INSERT INTO appointment_relay.outbox (source_table, operation, row_id, state, appointment_id,
                                        appointment_external_id, rescheduled_from_id, start_time,
                                        duration_minutes, entered_in_error, patient_id, patient_key,
                                        ordering_key)
  SELECT TG_TABLE_NAME, TG_OP, NEW.id, rtrim(NEW.state::text), a.id, a.externally_exposable_id::text,
         a.appointment_rescheduled_from_id, a.start_time, a.duration_minutes,
         CASE WHEN a.id IS NULL THEN NULL ELSE a.entered_in_error_id IS NOT NULL END, a.patient_id,
         (SELECT p.key::text FROM public.api_patient p WHERE p.id = a.patient_id),
         a.externally_exposable_id::text
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (
    SELECT c.id, c.externally_exposable_id, c.appointment_rescheduled_from_id, c.start_time, c.duration_minutes,
           c.entered_in_error_id, c.patient_id
    FROM public.api_appointment c
    WHERE c.note_id = NEW.note_id
      AND NOT EXISTS (SELECT 1 FROM public.api_appointment r WHERE r.appointment_rescheduled_from_id = c.id)
    ORDER BY c.id DESC
    LIMIT 1
  ) AS a ON true
  RETURNING id INTO event_id;
  IF pg_catalog.pg_sequence_last_value('appointment_relay.listening'::pg_catalog.regclass) <> 0 THEN
    PERFORM pg_catalog.pg_notify('appointment_relay', event_id::text);
  END IF;
  RETURN NULL;
END
$$;

-- EXECUTE on a new function for every role that has it on another (the pattern 0004 and 0007 spell out in
-- full), kept for later migrations like grant_like (0005) for tables.
CREATE FUNCTION appointment_relay.grant_execute_like(source regprocedure, target regprocedure) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  grantee_name text;
BEGIN
  FOR grantee_name IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
    FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
    WHERE p.oid = source AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
  LOOP
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', target, grantee_name);
  END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION appointment_relay.grant_execute_like(regprocedure, regprocedure) FROM PUBLIC;

-- The roles that run the daemon (they may run retention) may say whether they listen.
SELECT appointment_relay.grant_execute_like('appointment_relay.drop_partition(text[], interval)',
                                            'appointment_relay.set_listening(integer)');
